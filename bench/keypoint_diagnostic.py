"""The keypoint diagnostic (kpod.weighting.diagnostic) across gradient estimators and seeds, in one
command, so that the table in docs/results.md can be reproduced:

    KPOD_DATA_DIR=../shared/data python bench/keypoint_diagnostic.py [--seeds 0 1 2] [--n 600]

Rows: the shipped default (score-function estimator, deleted tokens, reasoner frozen after its
warm-up) for every seed; for the first seed also the paper's setting (straight-through, v_mask,
contextual input, reasoner trained jointly).
"""

import argparse
import os
import time
from pathlib import Path

from kpod.weighting.diagnostic import run_keypoint_diagnostic

PAPER = dict(estimator="straight_through", masking="embedding", reasoner_input="contextual", freeze_reasoner=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--alpha", type=float, default=None, help="default: the weighting config's")
    args = parser.parse_args()
    tokenizer = Path(os.environ.get("KPOD_DATA_DIR", "../shared/data")) / "tokenizers" / "llama"
    extra = {} if args.alpha is None else {"alpha": args.alpha}
    settings = [("default", {}, seed) for seed in args.seeds] + [("paper", PAPER, args.seeds[0])]
    print(
        "| setting | seed | answer loss after warm-up | mean w needed | unselected operand | filler | ROC AUC | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    aucs = []
    for name, options, seed in settings:
        start = time.perf_counter()
        r = run_keypoint_diagnostic(tokenizer, n=args.n, seed=seed, progress=False, **extra, **options)
        seconds = time.perf_counter() - start
        if name == "default":
            aucs.append(r["roc_auc"])
        print(
            f"| {name} | {seed} | {r['answer_loss_after_warmup']:.2f} | {r['mean_w_needed']:.3f} | "
            f"{r['mean_w_unselected_operand']:.3f} | {r['mean_w_filler']:.3f} | {r['roc_auc']:.3f} | {seconds:.0f} |",
            flush=True,
        )
    print(f"default setting, ROC AUC over {len(aucs)} seeds: min {min(aucs):.3f}, mean {sum(aucs) / len(aucs):.3f}")


if __name__ == "__main__":
    main()
