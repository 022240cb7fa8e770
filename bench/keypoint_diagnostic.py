"""The keypoint diagnostic (kpod.weighting.diagnostic) across gradient estimators, reasoner inputs
and seeds, in one command, so that the table in docs/results.md can be reproduced:

    KPOD_DATA_DIR=../shared/data python bench/keypoint_diagnostic.py [--seeds 0 1 2] [--n 1000]

Rows: the shipped default (score-function term with the greedy baseline, contextual reasoner input)
for every seed; the batch baseline, straight-through only (the method doc as written) and the
token reasoner input for the first seed.
"""

import argparse
import os
import time
from pathlib import Path

from kpod.weighting.diagnostic import run_keypoint_diagnostic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    tokenizer = Path(os.environ.get("KPOD_DATA_DIR", "../shared/data")) / "tokenizers" / "llama"
    settings = [("greedy", "contextual", seed) for seed in args.seeds]
    settings += [("batch", "contextual", args.seeds[0]), ("none", "contextual", args.seeds[0]), ("greedy", "token", args.seeds[0])]
    print("| score_function | reasoner_input | seed | answer loss after warm-up | mean w needed | unselected operand | filler | ROC AUC | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    aucs = []
    for score, reasoner_input, seed in settings:
        start = time.perf_counter()
        r = run_keypoint_diagnostic(tokenizer, n=args.n, seed=seed, progress=False, score_function=score,
                                    reasoner_input=reasoner_input)
        seconds = time.perf_counter() - start
        if score == "greedy" and reasoner_input == "contextual":
            aucs.append(r["roc_auc"])
        print(f"| {score} | {reasoner_input} | {seed} | {r['answer_loss_after_warmup']:.2f} | {r['mean_w_needed']:.3f} | "
              f"{r['mean_w_unselected_operand']:.3f} | {r['mean_w_filler']:.3f} | {r['roc_auc']:.3f} | {seconds:.0f} |", flush=True)
    print(f"default setting, ROC AUC over {len(aucs)} seeds: min {min(aucs):.3f}, mean {sum(aucs) / len(aucs):.3f}")


if __name__ == "__main__":
    main()
