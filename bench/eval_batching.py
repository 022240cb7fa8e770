"""Evaluation speed: greedy generation at several batch sizes (left padding), with the LoRA adapter
applied as PEFT layers or merged into the weights, on the same questions and the same model; prints
each setting's time and speed ratio against the first one, and checks that every setting gives the
same outputs as the first.

    KPOD_DATA_DIR=../shared/data python bench/eval_batching.py [--model smollm2] [--max-new-tokens 64]
    KPOD_DATA_DIR=../shared/data python bench/eval_batching.py --model RUN/student --dataset svamp \\
        --questions 64 --max-new-tokens 160 --settings peft:16,merged:16,merged:32,merged:64
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import build_shaped_model  # bench/common.py: bench/ is on sys.path when a bench runs

from kpod.data import load_dataset_splits
from kpod.decoding import greedy_continuations
from kpod.models import load_student, merge_adapter
from kpod.rationale import format_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: a tiny LLaMA from the real tokenizer")
    parser.add_argument("--dataset", default="gsm8k")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--settings",
        default="peft:1,peft:16",
        help="adapter:batch_size,... (adapter: peft or merged; the same for a model without adapter); the first is the baseline",
    )
    args = parser.parse_args()
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        name = args.model or str(build_shaped_model("small-llama", Path(tmp) / "tiny"))
        prompts = [format_prompt(q.question) for q in load_dataset_splits(args.dataset).test[: args.questions]]
        print(
            f"model {args.model or 'tiny LLaMA (hidden 256, 4 layers)'}, {len(prompts)} {args.dataset} questions, {args.max_new_tokens} new tokens"
        )
        model, tokenizer = load_student(name)
        merged = None
        baseline = None
        for adapter, batch_size in settings:
            if adapter == "merged" and merged is None:
                merged = merge_adapter(load_student(name)[0])
            start = time.perf_counter()
            outputs = greedy_continuations(
                merged if adapter == "merged" else model,
                tokenizer,
                prompts,
                args.max_new_tokens,
                batch_size=batch_size,
                progress=False,
            )
            seconds = time.perf_counter() - start
            baseline = baseline or (seconds, outputs)
            same = sum(a.strip() == b.strip() for a, b in zip(baseline[1], outputs))
            print(
                f"{adapter} batch {batch_size}: {seconds:.1f} s, speed-up {baseline[0] / seconds:.2f}x, "
                f"identical outputs {same}/{len(prompts)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
