"""Recipe: train the student (KPOD or Std-CoT) from the run folder's rationales, weights and schedule."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import time
import zipfile
from pathlib import Path

import torch
from transformers import TrainingArguments

from kpod import placement
from kpod.artifacts import RunPaths, rationale_key, read_rationales, read_schedule, read_weights, write_json
from kpod.config import TRAINER_ARGS_DEFAULTS, ConfigError, KPODConfig
from kpod.data.datasets import DatasetSplits
from kpod.files import DataError
from kpod.layout import DistillCollator, DistillExample
from kpod.models import add_lora, is_seq2seq, load_student, save_trained_student
from kpod.student.data import DistillDataset
from kpod.student.trainer import DevAccuracyCallback, DistillTrainer

log = logging.getLogger(__name__)


def build_examples(cfg: KPODConfig, paths: RunPaths, splits: DatasetSplits | None = None) -> list[DistillExample]:
    rows = read_rationales(paths.rationales("train"), include_incorrect=cfg.train.include_incorrect)
    if splits is not None and splits.train:
        known = {q.id for q in splits.train}
        unknown = sorted({r["id"] for r in rows} - known)
        if unknown:
            raise DataError(
                f"{paths.rationales('train')}: {len(unknown)} rationale id(s) match no training question of "
                f"{cfg.dataset} (e.g. {', '.join(unknown[:3])}); was it generated for another dataset or split?"
            )
    use_weights = cfg.method == "kpod" and not cfg.train.uniform_weights
    weights = read_weights(paths.weights) if use_weights else {}
    schedule = {}
    if cfg.method == "kpod" and cfg.schedule.progressive:
        if not paths.schedule.is_file():
            raise DataError(
                f"{paths.schedule}: schedule not found (run `kpod calculate_difficulties` and `kpod cluster`, "
                "or set schedule.progressive=false)"
            )
        data = read_schedule(paths.schedule)
        phases = cfg.curriculum_phases()
        if data.phases != phases or data.epochs != cfg.train.epochs:
            raise DataError(
                f"{paths.schedule} was computed for {data.phases} phases over {data.epochs} epochs, but the config "
                f"asks for {phases} over {cfg.train.epochs}; recompute it (kpod cluster)"
            )
        schedule = data.input_steps
    examples = []
    for row in rows:
        key = rationale_key(row)
        if use_weights and key not in weights:
            raise DataError(f"{paths.weights}: no weights for rationale {key}; rerun `kpod train_token_weighting`")
        if schedule and key not in schedule:
            raise DataError(f"{paths.schedule}: no schedule for rationale {key}; rerun `kpod cluster`")
        examples.append(
            DistillExample(
                key,
                row["question"],
                answer=row["gold"],
                steps=row["steps"],
                weights=weights.get(key),
                input_steps=schedule.get(key),
            )
        )
    return examples


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (a crash or full disk while it was
    written), or None when it looks complete: trainer_state.json parses, weights are present and
    every safetensors / torch file is whole."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as exc:
        return f"{state.name} unreadable ({exc.__class__.__name__})"
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    if not weights:
        return "no model or adapter weights"
    for f in [*weights, *folder.glob("*.pt"), *folder.glob("*.pth")]:
        whole = _safetensors_whole(f) if f.suffix == ".safetensors" else zipfile.is_zipfile(f)
        if not whole:
            return f"{f.name} truncated or damaged"
    return None


def _safetensors_whole(path: Path) -> bool:
    """The 8-byte header length, the JSON header, and every tensor's bytes are all in the file."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + length + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


class DiskFullError(OSError):
    """The disk filled up while training wrote a checkpoint or the student."""


# how a full disk reads when it is not a plain OSError: safetensors' Rust error, torch's zip writer
_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "PytorchStreamWriter failed writing file")


def caused_by_full_disk(exc: BaseException | None) -> bool:
    """Whether the disk filling up is what raised `exc`, whichever library raised it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_message(checkpoints: Path) -> str:
    """Remove the checkpoint left half-written, and say how much space a checkpoint needs and which
    complete one a rerun resumes from."""
    complete = latest_complete_checkpoint(checkpoints)
    for folder in Path(checkpoints).glob("checkpoint-*"):
        if folder != complete and folder.is_dir() and checkpoint_problem(folder):
            shutil.rmtree(folder, ignore_errors=True)
    size = sum(f.stat().st_size for f in complete.rglob("*") if f.is_file()) if complete else 0
    free = shutil.disk_usage(checkpoints).free if Path(checkpoints).exists() else 0
    resume = f"rerun to resume from {complete.name}" if complete else "rerun to start again"
    need = f"a checkpoint takes about {size / 2**20:.0f} MiB, " if size else ""
    return (
        f"disk full while writing a checkpoint in {checkpoints} ({need}{free / 2**20:.0f} MiB free there): free space, "
        f"or keep fewer checkpoints (train.trainer_args.save_total_limit=1, or train.save_checkpoints=false), then "
        f"{resume}; the half-written checkpoint was removed"
    )


def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint-N folder that can be resumed from; damaged newer ones are named in the log."""
    folders = sorted(
        (f for f in Path(checkpoints).glob("checkpoint-*") if f.is_dir() and f.name[11:].isdigit()),
        key=lambda f: int(f.name[11:]),
        reverse=True,
    )
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning("skipping %s: %s (left by an interrupted save); resuming from an older checkpoint", folder, problem)
    return None


def training_arguments(cfg: KPODConfig, paths: RunPaths) -> TrainingArguments:
    """kpod's own settings, then kpod's defaults, then train.trainer_args as given."""
    t = cfg.train
    if cfg.report_to == "tensorboard":  # transformers 5 reads the folder from the environment
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(paths.tensorboard)
    owned = {
        "output_dir": str(paths.checkpoints),
        "num_train_epochs": t.epochs,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate,
        "save_strategy": "epoch" if t.save_checkpoints else "no",
        "report_to": [] if cfg.report_to == "none" else [cfg.report_to],
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "remove_unused_columns": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "use_cpu": not torch.cuda.is_available(),  # lets torchrun run gloo data parallelism on CPUs
    }
    try:
        return TrainingArguments(**{**owned, **TRAINER_ARGS_DEFAULTS, **accelerator_defaults(cfg), **t.trainer_args})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.trainer_args: {exc}") from None


def accelerator_defaults(cfg: KPODConfig) -> dict:
    """Trainer settings for the hardware, under train.trainer_args (which override them):
    - autocast to kpod.placement's low precision (bf16 on a GPU that has it), float32 master weights;
    - on a GPU, batches of similar length (the Trainer's group_by_length: less padding; a causal student's
      item has the whole text in every phase, so lengths do not move with the curriculum) and two
      persistent loader workers. A CPU run keeps the plain random order, so its figures stay as measured."""
    out = {}
    low = placement.low_precision(cfg.student.dtype)
    if low == torch.bfloat16:
        out["bf16"] = True
    elif low == torch.float16 and torch.cuda.is_available():  # fp16 autocast needs a GPU's grad scaler
        out["fp16"] = True
    if torch.cuda.is_available():
        out.update(
            train_sampling_strategy="group_by_length", dataloader_num_workers=2, dataloader_persistent_workers=True
        )
    return out


def train_student(cfg: KPODConfig, splits: DatasetSplits | None = None, model_path: str | None = None) -> dict:
    """The train stage: examples from the run folder, the Trainer, resume, the student and its summary."""
    paths = RunPaths(cfg.run_dir)
    examples = build_examples(cfg, paths, splits)
    base_name = model_path or cfg.student.model
    trainer, dataset, dev = build_trainer(cfg, paths, examples=examples, splits=splits, base_name=base_name)
    checkpoint = latest_complete_checkpoint(paths.checkpoints) if cfg.train.resume else None
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:
        if not caused_by_full_disk(exc):
            raise
        raise DiskFullError(disk_full_message(paths.checkpoints)) from None
    seconds = time.time() - start
    if not math.isfinite(result.training_loss):  # before anything is written
        raise RuntimeError(f"training ended with a non-finite loss ({result.training_loss}); lower train.learning_rate")
    if (dev is None or dev.best is None) and trainer.is_world_process_zero():  # one process writes the student
        save_trained_student(trainer.model, trainer.processing_class, folder=paths.student, base_model=base_name)
    trainer.accelerator.wait_for_everyone()
    report = dataset.truncation_report()
    if report:
        log.warning(report)
    summary = {
        "method": cfg.method,
        "examples": len(examples),
        "epochs": cfg.train.epochs,
        "steps": trainer.state.global_step,
        "train_loss": result.training_loss,
        "seconds": seconds,
        "loss_history": [h for h in trainer.state.log_history if "loss" in h],
        "dev_history": dev.history if dev else [],
        "best_dev_accuracy": dev.best if dev else None,
        "truncated_inputs": len(dataset.truncated_inputs),
        "truncated_targets": len(dataset.truncated_targets),
        "resumed": checkpoint is not None,
    }
    write_json(paths.train_summary, summary)
    return {k: v for k, v in summary.items() if k != "loss_history"}  # the full history stays in the file


def build_trainer(
    cfg: KPODConfig, paths: RunPaths, examples: list[DistillExample], splits: DatasetSplits | None, base_name: str
) -> tuple[DistillTrainer, DistillDataset, DevAccuracyCallback | None]:
    """The student (with LoRA when asked), its dataset, the dev-accuracy callback, the Trainer."""
    student = cfg.student
    model, tokenizer = load_student(base_name, student.dtype, trained_whole=not student.lora)
    if student.lora and not hasattr(model, "peft_config"):
        model = add_lora(
            model,
            r=student.lora_r,
            alpha=student.lora_alpha,
            dropout=student.lora_dropout,
            target_modules=student.target_modules,
        )
    seq2seq = is_seq2seq(model)
    weighting = (
        dict(weight_norm=cfg.train.weight_norm, weight_floor=cfg.train.weight_floor, overlap=cfg.weighting.overlap)
        if any(e.weights is not None for e in examples)
        else {}
    )
    dataset = DistillDataset(
        examples,
        tokenizer,
        seq2seq=seq2seq,
        max_input_tokens=student.max_input_tokens,
        max_target_tokens=student.max_target_tokens,
        **weighting,
    )
    log.info("%d encodings of %d examples made before training", dataset.encode_all(), len(dataset))
    callbacks = []
    dev = None
    if cfg.train.eval_every and splits is not None and splits.dev:
        dev = DevAccuracyCallback(
            splits.dev[: cfg.train.eval_questions],
            tokenizer,
            best_dir=paths.student,
            base_model=base_name,
            every=cfg.train.eval_every,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
        )
        callbacks.append(dev)
    trainer = DistillTrainer(
        model=model,
        args=training_arguments(cfg, paths),
        train_dataset=dataset,
        data_collator=DistillCollator(tokenizer.pad_token_id, seq2seq),
        processing_class=tokenizer,
        callbacks=callbacks,
        phases=cfg.schedule.phases if any(e.input_steps is not None for e in examples) else None,
    )
    return trainer, dataset, dev
