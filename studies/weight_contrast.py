"""How much the token weights of a run differ inside each rationale, as the student's loss sees them.

For each run folder: the stored weights (weights/weights.jsonl) of every rationale, rescaled to mean 1
over the rationale as `train.weight_norm=example_mean` does (with `--floor F`, first w' = F + (1 - F) w
as `train.weight_floor` does), then per rationale the max, min and 90th/10th percentile ratio
(medians over rationales), the share of tokens whose weight is below 0.2, and the tokens most often
below 0.2. A weighted loss whose weights are all near 1 is close to the uniform one.

    python studies/weight_contrast.py studies/out/svamp_study/kpod-s0 studies/out/svamp_study/kpod-s1 [--floor 0.5]
"""

import argparse
import collections
from pathlib import Path

import numpy as np

from kpod.artifacts import RunPaths
from kpod.files import read_jsonl
from kpod.token_weights import loss_weights


def contrast(run_dir: Path, floor: float) -> dict:
    maxima, minima, spreads, low_tokens = [], [], [], collections.Counter()
    n_tokens = n_low = 0
    for record in read_jsonl(RunPaths(run_dir).weights):
        raw = np.asarray(record["weights"], dtype=float)
        w = loss_weights(raw, np.ones(len(raw), dtype=bool), floor=floor)
        maxima.append(w.max())
        minima.append(w.min())
        spreads.append(np.percentile(w, 90) / max(np.percentile(w, 10), 1e-9))
        low = w < 0.2
        n_tokens += len(w)
        n_low += int(low.sum())
        low_tokens.update(t for t, is_low in zip(record["tokens"], low) if is_low)
    return {
        "rationales": len(maxima),
        "median max": float(np.median(maxima)),
        "median min": float(np.median(minima)),
        "median p90/p10": float(np.median(spreads)),
        "tokens below 0.2": n_low / n_tokens,
        "most often below 0.2": [t for t, _ in low_tokens.most_common(8)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--floor", type=float, default=0.0, help="train.weight_floor to apply first")
    args = parser.parse_args()
    print(f"weights rescaled to mean 1 per rationale, floor {args.floor}")
    print("| run | rationales | median max | median min | median p90/p10 | tokens < 0.2 | most often < 0.2 |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        c = contrast(run, args.floor)
        tokens = " ".join(f"`{t}`" for t in c["most often below 0.2"])
        print(
            f"| {run.name} | {c['rationales']} | {c['median max']:.2f} | {c['median min']:.2f} | "
            f"{c['median p90/p10']:.2f} | {100 * c['tokens below 0.2']:.1f}% | {tokens} |"
        )


if __name__ == "__main__":
    main()
