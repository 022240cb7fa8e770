"""Evaluation time with and without ending each answer once it is complete (decoding.StopWhenComplete).

The pretrained SmolLM2-135M-Instruct on SVAMP test questions, greedy, batched: the same questions
decoded both ways in one process; prints the time ratio and whether the cleaned outputs agree.

    KPOD_DATA_DIR=../shared/data python bench/eval_stopping.py --questions 32
"""

import argparse
import time

import torch
from common import data_root  # bench/common.py: bench/ is on sys.path when a bench runs

from kpod.data import load_dataset_splits
from kpod.decoding import clean_generation, greedy_continuations
from kpod.models import load_student
from kpod.rationale import format_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = data_root()
    prompts = [format_prompt(q.question) for q in load_dataset_splits("svamp", root).test[: args.questions]]
    model, tokenizer = load_student(args.model)
    seconds, outputs = {}, {}
    for stop in (False, True):
        start = time.perf_counter()
        texts = greedy_continuations(
            model, tokenizer, prompts, args.max_new_tokens, args.batch_size, progress=False, stop_when_complete=stop
        )
        seconds[stop], outputs[stop] = time.perf_counter() - start, [clean_generation(t) for t in texts]
    same = sum(a == b for a, b in zip(outputs[False], outputs[True]))
    print(
        f"{args.model}, {len(prompts)} SVAMP questions, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}"
    )
    print(
        f"to max_new_tokens: {seconds[False]:.1f} s; stop when complete: {seconds[True]:.1f} s; "
        f"ratio {seconds[False] / seconds[True]:.2f}x; cleaned outputs identical: {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
