"""What kpod's training loop adds to a bare step: the `train` stage's Trainer (built by
student.recipe.build_trainer, KPOD weights and schedule included) against a bare forward + backward +
AdamW step of the same model on the same batches, in the same process. With a tiny model on a CPU
almost all of a step is overhead, so this is where overhead shows (issue 25's goal: <= 1.15x).

Per-step times are the median gap between consecutive optimizer steps after two warm-up steps (the
Trainer's: data loading, loss, clipping, scheduler and callbacks included).

    KPOD_DATA_DIR=../shared/data python bench/step_overhead.py [--n 64] [--batch 8] [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from common import build_shaped_model, data_root  # noqa: E402

from kpod import pipeline, placement  # noqa: E402
from kpod.artifacts import RunPaths  # noqa: E402
from kpod.config import load_config  # noqa: E402
from kpod.student.recipe import build_examples, build_trainer  # noqa: E402


class StepClock(TrainerCallback):
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def median_gap(stamps: list[float], skip: int = 2) -> float:
    return statistics.median(b - a for a, b in zip(stamps[skip:], stamps[skip + 1 :]))


def bare_steps(model, batches: list[dict], lr: float) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    stamps = []
    for batch in batches:
        batch = placement.to_device({k: v for k, v in batch.items() if k != "token_weights"}, model.device)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--method", default="kpod", choices=("kpod", "std-cot"))
    parser.add_argument("--smoke", action="store_true", help="8 questions, 6 steps")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.batch, args.steps = 8, 2, 6
    root = data_root()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_shaped_model(args.shape, Path(tmp) / "model", root)
        cfg = load_config(
            overrides=[
                "dataset=gsm8k",
                "teacher.kind=reference",
                f"data.data_dir={root}",
                f"data.max_train_questions={args.n}",
                f"student.model={model}",
                f"method={args.method}",
                "student.lora_r=16",
                "student.lora_alpha=32",
                f"train.batch_size={args.batch}",
                "train.epochs=1",
                "train.eval_every=0",
                "train.save_checkpoints=false",
                "weighting.epochs=1",
                f"train.trainer_args.max_steps={args.steps}",
                "train.trainer_args.logging_steps=1000",
                f"output_dir={Path(tmp) / 'run'}",
            ]
        )
        stages = ["generate"] + (
            ["train_token_weighting", "calculate_difficulties", "cluster"] * (args.method == "kpod")
        )
        for stage in stages:
            pipeline.STAGE_FUNCTIONS[stage](cfg)
        paths = RunPaths(cfg.run_dir)
        trainer, _, _ = build_trainer(
            cfg, paths, examples=build_examples(cfg, paths), splits=None, base_name=str(model)
        )
        batches = [b for _, b in zip(range(args.steps), trainer.get_train_dataloader())]
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
        trainer_step = median_gap(clock.ends)
        bare_model, _, _ = build_trainer(
            cfg, paths, examples=build_examples(cfg, paths), splits=None, base_name=str(model)
        )
        bare_step = median_gap(bare_steps(bare_model.model, batches, cfg.train.learning_rate))
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches)
    print(
        f"{args.shape}, {args.method}, batch {args.batch} (~{tokens:.0f} tokens), {args.steps} steps, {torch.get_num_threads()} threads"
    )
    print(f"bare step {1000 * bare_step:.1f} ms, kpod train step {1000 * trainer_step:.1f} ms")
    print(f"train step / bare step: {trainer_step / bare_step:.3f}  [goal <= 1.15]")


if __name__ == "__main__":
    main()
