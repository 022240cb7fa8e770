"""Where every model kpod runs is placed, and in which precision: one rule for all stages.

The device is the process's own, from accelerate's `PartialState`: the CPU on a machine without a GPU,
the process's GPU under `accelerate launch` / `torchrun`. The precision is `student.dtype`; its default
(None) is bfloat16 on a GPU that supports it and float32 elsewhere, so a CPU run computes what it
always did. Weights that are trained whole stay float32 (the optimizer needs full-precision master
weights); they then run in the low precision under autocast instead.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def process_state():
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # gloo across CPU processes under torchrun


def device() -> torch.device:
    return torch.device(process_state().device)


def dtype_name(setting: str | None, on: torch.device | None = None) -> str:
    """The dtype a model runs in on this process's device: the setting, or for None (the default)
    bfloat16 where the device supports it, else float32. 'auto' keeps the checkpoint's dtype."""
    if setting is not None:
        return setting
    on = on or device()
    return "bfloat16" if on.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


def low_precision(setting: str | None) -> torch.dtype | None:
    """The autocast dtype for models whose weights are trained in float32, or None to run as stored."""
    name = dtype_name(setting)
    return DTYPES[name] if name in ("bfloat16", "float16") else None


def autocast(setting: str | None):
    """Autocast to the low precision on this process's device, or a no-op for float32."""
    dtype = low_precision(setting)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device().type, dtype=dtype)


def to_device(batch: dict, where: torch.device | None = None) -> dict:
    """A batch of tensors (and other values, kept as they are) on `where` (default: this process's device)."""
    where = where or device()
    return {k: v.to(where, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
