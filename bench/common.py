"""What benches share: the data folder, and randomly initialised models of named real shapes built as
ordinary Hugging Face folders with the real tokenizers (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """KPOD_DATA_DIR, else ../shared/data (run from the project root)."""
    root = Path(os.environ.get("KPOD_DATA_DIR", "../shared/data"))
    if not root.is_dir():
        raise SystemExit(f"{root}: no data folder; set KPOD_DATA_DIR to the shared data (see README)")
    return root


# name -> (kind, tokenizer folder under <data>/tokenizers, config keywords); "tiny" is the tests' shape
SHAPES = {
    "tiny": ("llama", "smollm2", {"hidden": 64, "layers": 2}),
    "small-llama": ("llama", "llama", {"hidden": 256, "layers": 4}),  # the LLaMA tokenizer, 256 wide, 4 layers
    "smollm2-135m": ("llama", "smollm2", "config.json"),
    "llama-1b": (
        "llama",
        "llama",
        {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "max_position_embeddings": 2048,
        },
    ),
    "flan-t5-large": (
        "t5",
        "flan-t5",
        {
            "d_model": 1024,
            "d_kv": 64,
            "d_ff": 2816,
            "num_layers": 24,
            "num_decoder_layers": 24,
            "num_heads": 16,
            "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": False,
        },
    ),
}


def shaped_config(shape: str, root: Path | None = None):
    """The transformers config of a named real shape (not of the tests' small ones)."""
    from transformers import AutoConfig, LlamaConfig, T5Config

    from kpod.models import load_tokenizer

    kind, tokenizer_folder, spec = SHAPES[shape]
    folder = (root or data_root()) / "tokenizers" / tokenizer_folder
    if spec == "config.json":
        return AutoConfig.from_pretrained(folder)
    tokenizer = load_tokenizer(str(folder))
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "t5":
        return T5Config(vocab_size=32128, decoder_start_token_id=tokenizer.pad_token_id, **ids, **spec)
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, **ids, **spec)


def build_shaped_model(shape: str, out_dir: Path, root: Path | None = None, dtype: str = "float32") -> Path:
    """A randomly initialised model of the shape, with its real tokenizer, saved as a folder (once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from kpod.models import load_tokenizer
    from kpod.testing import build_tiny_model

    root = root or data_root()
    kind, tokenizer_folder, spec = SHAPES[shape]
    if isinstance(spec, dict) and "hidden" in spec:  # the tests' small shapes
        return build_tiny_model(kind, root / "tokenizers" / tokenizer_folder, out_dir, **spec)
    if (out_dir / "config.json").is_file():
        return out_dir
    torch.manual_seed(0)
    config = shaped_config(shape, root)
    cls = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    model = cls.from_config(config).to(getattr(torch, dtype))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    load_tokenizer(str(root / "tokenizers" / tokenizer_folder)).save_pretrained(tmp)
    tmp.replace(out_dir)
    return out_dir
