"""What ending answers early costs when nothing ends early: greedy_continuations with its stopping
criterion against plain `model.generate` (same batch, same max_new_tokens), on a tiny random LLaMA
with a real tokenizer, where decoding is cheap and any per-token Python work shows. Both in one
process, alternated; prints the median ratio and whether the continuations are identical.

    KPOD_DATA_DIR=../shared/data python bench/stopping_overhead.py [--tokenizer smollm2] [--smoke]
"""

import argparse
import statistics
import tempfile
import time

import torch
from common import data_root  # bench/common.py: bench/ is on sys.path when a bench runs

from kpod.data import load_dataset_splits
from kpod.decoding import greedy_continuations
from kpod.models import load_student
from kpod.rationale import format_prompt
from kpod.testing import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="smollm2", help="a folder of KPOD_DATA_DIR/tokenizers")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 4 questions, 8 tokens, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.questions, args.max_new_tokens, args.repeats = 4, 8, 1
    torch.manual_seed(0)
    root = data_root()
    prompts = [format_prompt(q.question) for q in load_dataset_splits("svamp", root).test[: args.questions]]
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_student(str(build_tiny_model("llama", root / "tokenizers" / args.tokenizer, tmp)))
    model.generation_config.eos_token_id = None  # nothing may end early: every row runs to max_new_tokens

    def plain() -> list[str]:
        tokenizer.padding_side = "left"
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        out = model.generate(
            **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)

    def kpod() -> list[str]:
        return greedy_continuations(
            model, tokenizer, prompts, args.max_new_tokens, batch_size=len(prompts), progress=False
        )

    times: dict[str, list[float]] = {"plain": [], "kpod": []}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, run in (("plain", plain), ("kpod", kpod)):
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["kpod"]) / statistics.median(times["plain"])
    same = sum(a == b for a, b in zip(outputs["plain"], outputs["kpod"]))
    print(
        f"tiny LLaMA ({args.tokenizer} tokenizer), {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
        f"{args.repeats} repeats: plain generate {statistics.median(times['plain']):.2f} s, "
        f"greedy_continuations with stopping {statistics.median(times['kpod']):.2f} s, ratio {ratio:.2f}x; "
        f"identical continuations {same}/{len(prompts)}"
    )


if __name__ == "__main__":
    main()
