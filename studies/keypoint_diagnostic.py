"""The keypoint diagnostic (kpod.weighting.diagnostic) across gradient estimators and seeds, in one
command, so that the table in docs/results.md can be reproduced:

    KPOD_DATA_DIR=../shared/data python studies/keypoint_diagnostic.py [--seeds 0 1 2] [--n 600] [--ablations]

Rows: the shipped default (score-function estimator, deleted tokens, reasoner frozen after its
warm-up) for every seed; for the first seed also the paper's setting (straight-through, v_mask,
contextual input, reasoner trained jointly, no keep rate, no position code). With --ablations, for
every seed, the default with one of our deviations from the paper reverted at a time, and the
paper's setting; resumable (one JSON line per finished run in --out).
"""

import argparse
import json
import time
from pathlib import Path

from kpod.data.datasets import required_data_dir
from kpod.weighting.diagnostic import run_keypoint_diagnostic

# each of our deviations, reverted to the paper's choice (straight-through needs the paper's v_mask)
REVERSIONS = {
    "estimator: straight-through": dict(estimator="straight_through", masking="embedding"),
    "masking: v_mask": dict(masking="embedding"),
    "reasoner input: contextual": dict(reasoner_input="contextual"),
    "reasoner: trained jointly": dict(freeze_reasoner=False),
    "keep rate: none": dict(keep_rate=None),
    "positions: none": dict(positions="none"),
}
PAPER = {k: v for options in REVERSIONS.values() for k, v in options.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--alpha", type=float, default=None, help="default: the weighting config's")
    parser.add_argument("--ablations", action="store_true", help="revert each deviation alone, every seed")
    parser.add_argument("--out", type=Path, default=Path("studies/out/keypoint_diagnostic.jsonl"))
    args = parser.parse_args()
    tokenizer = required_data_dir() / "tokenizers" / "llama"
    extra = {} if args.alpha is None else {"alpha": args.alpha}
    if args.ablations:  # seed by seed, so that an interrupted run leaves whole seeds
        rows = [("default", {}), *REVERSIONS.items(), ("paper", PAPER)]
        settings = [(name, options, seed) for seed in args.seeds for name, options in rows]
    else:
        settings = [("default", {}, seed) for seed in args.seeds] + [("paper", PAPER, args.seeds[0])]
    done = {}
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done[row["setting"], row["seed"], row["n"], row["alpha_arg"]] = row
    print(
        "| setting | seed | answer loss after warm-up | mean w needed | unselected operand | filler | ROC AUC | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    aucs = []
    for name, options, seed in settings:
        r = done.get((name, seed, args.n, args.alpha))
        if r is None:
            start = time.perf_counter()
            r = run_keypoint_diagnostic(tokenizer, n=args.n, seed=seed, progress=False, **extra, **options)
            r.update(setting=name, seed=seed, n=args.n, alpha_arg=args.alpha, seconds=time.perf_counter() - start)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
        seconds = r["seconds"]
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
