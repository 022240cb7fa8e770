"""Tiny randomly initialised students built from configs with real tokenizers, saved as ordinary
Hugging Face folders. Used by tests, benchmarks and `test_setup.py` where no weights exist."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from kpod.models import load_tokenizer


def build_tiny_model(
    kind: str, tokenizer_dir: str | Path, out_dir: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """kind: 't5' (Flan-T5 shaped, seq2seq) or 'llama' (causal). Returns the folder."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tokenizer = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(seed)
    if kind == "t5":
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden,
            d_kv=hidden // 4,
            d_ff=hidden * 2,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            dropout_rate=0.0,
        )
        model = T5ForConditionalGeneration(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: expected 't5' or 'llama'")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out_dir)
    return out_dir
