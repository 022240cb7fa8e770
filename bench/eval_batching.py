"""Evaluation speed: batched greedy generation (batch 16, left padding) versus one question at a
time, on the same 32 GSM8K test questions and the same model; prints the speed ratio and checks
that both give the same answers.

    KPOD_DATA_DIR=../shared/data python bench/eval_batching.py [--model smollm2] [--max-new-tokens 64]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from kpod.data import load_dataset_splits
from kpod.decoding import greedy_continuations
from kpod.models import load_student
from kpod.rationale import format_prompt
from kpod.testing import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None, help="default: a tiny LLaMA from the real tokenizer")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        name = args.model or str(
            build_tiny_model(
                "llama",
                Path(os.environ.get("KPOD_DATA_DIR", "../shared/data")) / "tokenizers/llama",
                Path(tmp) / "tiny",
                hidden=256,
                layers=4,
            )
        )
        model, tokenizer = load_student(name)
        prompts = [format_prompt(q.question) for q in load_dataset_splits("gsm8k").test[: args.questions]]
        start = time.perf_counter()
        one = greedy_continuations(model, tokenizer, prompts, args.max_new_tokens, batch_size=1, progress=False)
        single = time.perf_counter() - start
        start = time.perf_counter()
        batched = greedy_continuations(model, tokenizer, prompts, args.max_new_tokens, batch_size=16, progress=False)
        many = time.perf_counter() - start
    same = sum(a.strip() == b.strip() for a, b in zip(one, batched))
    print(
        f"model {args.model or 'tiny LLaMA (hidden 256, 4 layers)'}, {len(prompts)} questions, {args.max_new_tokens} new tokens"
    )
    print(
        f"one at a time: {single:.1f} s, batched (16): {many:.1f} s, speed-up {single / many:.1f}x; "
        f"identical outputs {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
