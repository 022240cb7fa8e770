"""kpod measured on the hardware it runs on: every stage of KPOD and of Std-CoT, one run each.

A randomly initialised model of a named real shape (bench/common.py: smollm2-135m from the shared
tokenizer folder's config, llama-1b, flan-t5-large; tiny for CI), GSM8K worked solutions as the
teacher (teacher.kind=reference), LoRA r16. For each stage it prints seconds, samples/s, tokens/s
(training: prompt + target, unpadded; evaluation: generated tokens), mean GPU utilisation (nvidia-smi,
sampled every 0.5 s) and peak memory (the GPU's, or the process's RSS on a CPU), then the ratios of
issue 25's goals, a bare training step of the same model and batch as the baseline.

Needs: the project installed, KPOD_DATA_DIR (../shared/data by default), and for --device cuda a GPU
and nvidia-smi. Installs and downloads nothing. On one H100/H200 the default (smollm2-135m, 2000
questions, 500 test questions) takes about 6 minutes by issue 25's estimate.

    KPOD_DATA_DIR=../shared/data python bench/gpu_pipeline.py [--shape llama-1b] [--n 2000] [--test 500]
    KPOD_DATA_DIR=../shared/data python bench/gpu_pipeline.py --device cpu --smoke     # CI, under a minute
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

KPOD_STAGES = ("generate", "train_token_weighting", "calculate_difficulties", "cluster", "train", "evaluate")
STD_COT_STAGES = ("generate", "train", "evaluate")


class GpuSampler:
    """Mean utilisation (sm %) of GPU 0 while the block runs, from `nvidia-smi` every 0.5 s."""

    def __init__(self):
        self.samples: list[float] = []
        self._process = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "500",
                    "-i",
                    "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc):
        if self._process:
            self._process.terminate()
            self._process.wait()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def peak_memory_gib(torch) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak RSS (never resets)


def measured(name: str, run, torch) -> dict:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as gpu:
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"stage": name, "seconds": seconds, "gpu_util": gpu.mean, "peak_gib": peak_memory_gib(torch)}


def training_tokens(cfg, tokenizer) -> tuple[int, int]:
    """(examples, prompt + target tokens of one epoch, unpadded): the layout makes source + target the
    whole text at every curriculum stage, so an epoch's tokens do not depend on the stage."""
    from transformers import AutoConfig

    from kpod.artifacts import RunPaths
    from kpod.layout import encode_example
    from kpod.models import is_seq2seq
    from kpod.student.recipe import build_examples

    examples = build_examples(cfg, RunPaths(cfg.run_dir))
    seq2seq = is_seq2seq(AutoConfig.from_pretrained(cfg.student.model))
    s = cfg.student
    total = 0
    for e in examples:
        enc = encode_example(e, 0, tokenizer, seq2seq, s.max_input_tokens, s.max_target_tokens)
        total += len(enc.source_ids) + len(enc.target_ids)
    return len(examples), total


def generated_tokens(cfg, tokenizer) -> int:
    from kpod.artifacts import RunPaths

    rows = [json.loads(line) for line in (RunPaths(cfg.run_dir).eval_dir("test") / "predictions.jsonl").open()]
    return sum(len(tokenizer(r["raw_output"], add_special_tokens=False)["input_ids"]) for r in rows)


def bare_step_tokens_per_second(cfg, tokenizer, torch, steps: int) -> float:
    """Tokens/s of a bare LoRA forward + backward + AdamW step of the same model, in the same precision,
    on the run's own first batches (no Trainer, no weights, the model's own loss)."""
    from kpod import placement
    from kpod.artifacts import RunPaths
    from kpod.layout import DistillCollator, encode_example, source_target_item
    from kpod.models import add_lora, is_seq2seq, load_student
    from kpod.student.recipe import build_examples

    s = cfg.student
    model, _ = load_student(s.model, s.dtype, trained_whole=not s.lora)
    model = add_lora(model, s.lora_r, s.lora_alpha, s.lora_dropout, s.target_modules)
    seq2seq = is_seq2seq(model)
    collate = DistillCollator(tokenizer.pad_token_id, seq2seq)
    items = [
        source_target_item(enc.source_ids, enc.target_ids, seq2seq)
        for enc in (
            encode_example(e, 0, tokenizer, seq2seq, s.max_input_tokens, s.max_target_tokens)
            for e in build_examples(cfg, RunPaths(cfg.run_dir))
        )
    ]
    size = cfg.train.batch_size
    batches = [collate(items[i : i + size]) for i in range(0, len(items) - size + 1, size)]
    batches = [batches[i % len(batches)] for i in range(steps + 2)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.learning_rate)
    model.train()
    tokens, start = 0, None
    for i, batch in enumerate(batches):
        if i == 2:  # two warm-up steps
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = placement.to_device({k: v for k, v in batch.items() if k != "token_weights"}, model.device)
        with placement.autocast(s.dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            tokens += int(batch["attention_mask"].sum()) + (int((batch["labels"] != -100).sum()) if seq2seq else 0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start) if start else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="smollm2-135m", help="tiny, smollm2-135m, llama-1b, flan-t5-large")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--n", type=int, default=2000, help="training questions")
    parser.add_argument("--test", type=int, default=500, help="test questions")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--bare-steps", type=int, default=10)
    parser.add_argument("--work", help="keep the model and run folders here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 questions, 1 epoch: checks it runs")
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.n, args.test, args.epochs, args.batch, args.max_new_tokens, args.bare_steps = (
            "tiny",
            8,
            4,
            1,
            4,
            8,
            1,
        )
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the placement rule then picks the CPU
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from common import build_shaped_model, data_root

    from kpod import pipeline
    from kpod.artifacts import RunPaths
    from kpod.config import load_config
    from kpod.models import load_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a GPU (torch.cuda.is_available() is False); use --device cpu")
    root = data_root()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        model = build_shaped_model(args.shape, work / f"model-{args.shape}", root)
        tokenizer = load_tokenizer(str(model))
        common = [
            "dataset=gsm8k",
            "teacher.kind=reference",
            f"data.data_dir={root}",
            f"data.max_train_questions={args.n}",
            f"data.max_eval_questions={args.test}",
            f"student.model={model}",
            "student.lora_r=16",
            "student.lora_alpha=32",
            f"train.batch_size={args.batch}",
            f"train.epochs={args.epochs}",
            "train.eval_every=0",
            "train.save_checkpoints=false",
            "train.trainer_args.logging_steps=1000",
            f"weighting.batch_size={args.batch}",
            "weighting.epochs=1",
            f"eval.batch_size={args.batch}",
            f"eval.max_new_tokens={args.max_new_tokens}",
        ]
        results: dict[str, list[dict]] = {}
        examples = epoch_tokens = 0
        for method, stages in (("std-cot", STD_COT_STAGES), ("kpod", KPOD_STAGES)):
            cfg = load_config(overrides=common + [f"method={method}", f"output_dir={work / method}"])
            rows = results[method] = []
            for stage in stages:
                row = measured(stage, functools.partial(pipeline.STAGE_FUNCTIONS[stage], cfg), torch)
                if stage == "generate" and method == "std-cot":  # the same rationales for both runs
                    examples, epoch_tokens = training_tokens(cfg, tokenizer)
                if stage in ("generate", "train_token_weighting", "calculate_difficulties"):
                    row.update(samples=examples)
                elif stage == "train":
                    trainer_seconds = json.loads(RunPaths(cfg.run_dir).train_summary.read_text())["seconds"]
                    row.update(
                        samples=examples * args.epochs,
                        tokens=epoch_tokens * args.epochs,
                        trainer_seconds=trainer_seconds,
                    )
                elif stage == "evaluate":
                    row.update(samples=args.test, tokens=generated_tokens(cfg, tokenizer))
                rows.append(row)
        bare = bare_step_tokens_per_second(
            load_config(overrides=common + ["method=std-cot", f"output_dir={work / 'std-cot'}"]),
            tokenizer,
            torch,
            args.bare_steps,
        )
    report(args, results, bare, torch)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "results": results, "bare_tokens_per_s": bare}, indent=2)
        )


def report(args, results: dict, bare: float, torch) -> None:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(
        f"{args.shape} on {device}, {args.n} GSM8K questions, {args.test} test, {args.epochs} epochs, batch {args.batch}, LoRA r16"
    )
    print(f"{'run':<8} {'stage':<24} {'seconds':>8} {'samples/s':>10} {'tokens/s':>10} {'GPU %':>6} {'peak GiB':>9}")
    for method, rows in results.items():
        for r in rows:
            per = {key: f"{r[key] / r['seconds']:.1f}" if r.get(key) else "-" for key in ("samples", "tokens")}
            util = f"{r['gpu_util']:.0f}" if r["gpu_util"] is not None else "n/a"
            print(
                f"{method:<8} {r['stage']:<24} {r['seconds']:8.1f} {per['samples']:>10} {per['tokens']:>10} {util:>6} {r['peak_gib']:9.2f}"
            )
    std = {r["stage"]: r for r in results["std-cot"]}
    kpod = {r["stage"]: r for r in results["kpod"]}
    std_epoch = std["train"]["seconds"] / args.epochs
    weighting_per_1000 = kpod["train_token_weighting"]["seconds"] / kpod["generate"]["samples"] * 1000
    std_epoch_per_1000 = std_epoch / std["generate"]["samples"] * 1000
    train_tps = std["train"]["tokens"] / std["train"]["trainer_seconds"]  # the Trainer's loop, without loading
    print("ratios (issue 25's goals in brackets):")
    print(
        f"  weighting per 1000 rationales / Std-CoT epoch on 1000: {weighting_per_1000 / std_epoch_per_1000:.2f}  [<= 0.5]"
    )
    print(f"  KPOD epoch / Std-CoT epoch: {kpod['train']['seconds'] / std['train']['seconds']:.3f}  [<= 1.05]")
    print(f"  Std-CoT training tokens/s (Trainer loop): {train_tps:.0f}  [>= 100k on the GPU, smollm2-135m]")
    print(f"  evaluation generated tokens/s: {std['evaluate']['tokens'] / std['evaluate']['seconds']:.0f}  [>= 10k]")
    print(f"  train stage tokens/s / bare step tokens/s: {train_tps / bare:.3f}  [>= 0.9, llama-1b]")


if __name__ == "__main__":
    main()
