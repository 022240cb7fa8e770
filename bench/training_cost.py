"""Training cost, each arm in its own process on the same model and data (GSM8K worked solutions):

  plain     a plain transformers Trainer fine-tune (the model's own loss), the baseline
  std-cot   our DistillTrainer with method=std-cot
  kpod      our DistillTrainer with token weights and the progressive schedule (a stage-0 epoch, then a full one)
  weighting the token-weighting stage with the default weighting config (frozen reasoner = the
            student, score-function estimator, deleted tokens)
  weighting-st  the paper's setting: straight-through estimator, v_mask, reasoner trained jointly (LoRA)

Prints tokens/s and peak RSS per arm, and the ratios: std-cot time / plain time (goal <= 1.05),
KPOD epoch / Std-CoT epoch, weighting per 1000 rationales / one Std-CoT epoch on 1000 rationales,
and weighting-st / weighting.

    KPOD_DATA_DIR=../shared/data python bench/training_cost.py [--model smollm2] [--n 64]

The cost goal of the token weighting (SVAMP, real GPT-3.5 rationales, SmolLM2, as the faithfulness bench):

    KPOD_DATA_DIR=../shared/data python bench/training_cost.py --model smollm2 --n 64 --arms std-cot,weighting \
        --rationales bench/out/weight_faithfulness/gpt35_first_correct_260.jsonl
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_shaped_model  # bench/common.py: bench/ is on sys.path when a bench runs

PAPER_WEIGHTING = {
    "weighting.estimator": "straight_through",
    "weighting.masking": "embedding",
    "weighting.reasoner_input": "contextual",
    "weighting.freeze_reasoner": False,
    "weighting.reasoner_lora": True,
}


def arm(name: str, model: str, n: int, work: Path, rationales: str | None = None) -> dict:
    import torch
    from transformers import Trainer

    from kpod import pipeline
    from kpod.artifacts import RunPaths
    from kpod.config import load_config
    from kpod.student.recipe import build_examples, build_trainer

    torch.manual_seed(0)
    run = work / "run"
    cfg = load_config(
        overrides={
            "output_dir": str(run),
            "student.model": model,
            **(
                {
                    "dataset": "svamp",
                    "teacher.kind": "file",
                    "teacher.import_path": rationales,
                    "weighting.max_rationale_tokens": 192,  # as studies/weight_faithfulness.py
                    "weighting.max_question_tokens": 96,
                }
                if rationales
                else {"teacher.kind": "reference"}
            ),
            "data.max_train_questions": n,
            "train.epochs": 2,
            "train.eval_every": 0,
            "train.save_checkpoints": False,
            "student.lora_r": 16,
            "student.lora_alpha": 32,
            "train.learning_rate": 1e-4,
            "train.trainer_args.logging_steps": 1000,
            "method": "std-cot" if name in ("plain", "std-cot") else "kpod",
            **(PAPER_WEIGHTING if name == "weighting-st" else {}),
        }
    )
    pipeline.generate(cfg)
    if name in ("kpod", "weighting", "weighting-st"):
        start = time.perf_counter()
        pipeline.train_token_weighting(cfg)
        weighting_seconds = time.perf_counter() - start
        if name.startswith("weighting"):
            return {"seconds": weighting_seconds, "rationales": n}
        pipeline.calculate_difficulties(cfg)
        pipeline.cluster(cfg)
    # the trainer, dataset (weight_norm, weight_floor, overlap) and LoRA exactly as the train stage builds them
    trainer, dataset, _ = build_trainer(cfg, RunPaths(run), build_examples(cfg, RunPaths(run)), None, model)
    dataset.phase = 10**6  # the last phase: whole rationales, to count an epoch's tokens
    tokens = sum(
        len(dataset[i]["input_ids"]) + len([t for t in dataset[i]["labels"] if t != -100]) * trainer.seq2seq
        for i in range(len(dataset))
    )
    dataset.phase = 0
    if name == "plain":
        items = [dataset[i] for i in range(len(dataset))]
        collate = trainer.data_collator
        trainer = Trainer(
            model=trainer.model,
            args=trainer.args,
            train_dataset=items,
            data_collator=lambda b: {k: v for k, v in collate(b).items() if k != "token_weights"},
        )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "epochs": 2, "tokens_epoch_full": tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="default: a tiny LLaMA built from the real tokenizer")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--arms", default="plain,std-cot,kpod,weighting,weighting-st")
    parser.add_argument(
        "--rationales", help="SVAMP rationales (JSONL, teacher.kind=file); default: GSM8K worked solutions"
    )
    parser.add_argument("--arm")
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.arm:
        result = arm(args.arm, args.model, args.n, Path(args.work), args.rationales)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_shaped_model("small-llama", Path(tmp) / "tiny"))
        results = {}
        for name in args.arms.split(","):
            work = Path(tmp) / name
            work.mkdir()
            command = [
                sys.executable,
                __file__,
                "--arm",
                name,
                "--model",
                model,
                "--n",
                str(args.n),
                "--work",
                str(work),
            ]
            if args.rationales:
                command += ["--rationales", str(Path(args.rationales).resolve())]
            out = subprocess.run(command, capture_output=True, text=True)
            line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(out.stderr[-3000:])
            results[name] = json.loads(line[7:])
    data = "SVAMP GPT-3.5" if args.rationales else "GSM8K"
    print(f"model {args.model or 'tiny LLaMA (hidden 256, 4 layers)'}, {args.n} {data} rationales, LoRA r=16, 2 epochs")
    for name, r in results.items():
        print(f"{name:<10} {r['seconds']:7.1f} s   peak RSS {r['peak_rss_mb']:7.0f} MB")
    if {"std-cot", "weighting"} <= results.keys():
        per_epoch = results["std-cot"]["seconds"] / 2
        print(
            "token weighting per 1000 rationales / one Std-CoT epoch on 1000 rationales: "
            f"{results['weighting']['seconds'] / per_epoch:.2f}"
        )
    if not {"plain", "kpod", "weighting-st"} <= results.keys():
        return
    plain, std, kpod, weighting = (results[k]["seconds"] for k in ("plain", "std-cot", "kpod", "weighting"))
    print(
        f"std-cot / plain Trainer time: {std / plain:.3f}   "
        f"(tokens/s {results['plain']['tokens_epoch_full'] * 2 / plain:.0f} vs {results['std-cot']['tokens_epoch_full'] * 2 / std:.0f})"
    )
    print(f"KPOD (stage 0 + stage 1 epochs) / Std-CoT (2 epochs) time: {kpod / std:.3f}")
    print(
        f"token weighting, paper setting (straight-through, joint LoRA reasoner) / default: "
        f"{results['weighting-st']['seconds'] / weighting:.2f}"
    )


if __name__ == "__main__":
    main()
