"""The Std-CoT - KPOD gap against training length, from the SVAMP study's committed CSVs.

Each length is EPOCHS=RESULTS_DIR: a folder with `std-cot-s<seed>/` and `kpod-s<seed>/` CSV folders
(`studies/svamp_study.py --csv-dir`); the seeds both arms have there are paired. Per length: the
difference with its paired bootstrap 95 % CI and pooled McNemar p, from kpod compare's own code.
Prints a Markdown table and writes the figure (gap with CI against epochs) as a PNG.

    python studies/gap_by_epochs.py 2=studies/results/svamp_study 6=studies/results/svamp_study_e6 \
        --png studies/figures/gap_by_epochs.png
"""

import argparse
from pathlib import Path

from compare_csvs import csv_run  # studies/ is on sys.path as a script

from kpod.evaluation.compare import compare_runs


def gap(results: Path, split: str) -> dict | None:
    runs = []
    for arm in ("std-cot", "kpod"):
        runs += [csv_run(folder, arm, split) for folder in sorted(results.glob(f"{arm}-s[0-9]*"))]
    seeds = {arm: {r.seed for r in runs if r.arm == arm} for arm in ("std-cot", "kpod")}
    shared = seeds["std-cot"] & seeds["kpod"]
    runs = [r for r in runs if r.seed in shared]
    if not shared:
        return None
    (pair,) = compare_runs(runs)["pairs"]
    return {"seeds": sorted(shared), **pair}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lengths", nargs="+", metavar="EPOCHS=RESULTS_DIR")
    parser.add_argument("--split", default="dev,test")
    parser.add_argument("--png")
    args = parser.parse_args()
    rows = []
    for spec in args.lengths:
        epochs, _, folder = spec.partition("=")
        result = gap(Path(folder), args.split)
        if result is not None:
            rows.append((int(epochs), result))
    print("| epochs | seeds | Std-CoT - KPOD (points) | 95% CI | Std-CoT only / KPOD only | McNemar p pooled |")
    print("|---|---|---|---|---|---|")
    for epochs, r in rows:
        sign = 1 if r["a"] == "std-cot" else -1
        low, high = sorted((sign * r["ci_low"], sign * r["ci_high"]))
        only = (r["a_only"], r["b_only"]) if sign == 1 else (r["b_only"], r["a_only"])
        print(
            f"| {epochs} | {', '.join(map(str, r['seeds']))} | {sign * r['difference']:+.2f} | "
            f"[{low:+.2f}, {high:+.2f}] | {only[0]} / {only[1]} | {r['p_pooled']:.3g} |"
        )
    if args.png and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for epochs, r in rows:
            sign = 1 if r["a"] == "std-cot" else -1
            low, high = sorted((sign * r["ci_low"], sign * r["ci_high"]))
            mid = sign * r["difference"]
            ax.errorbar([epochs], [mid], yerr=[[mid - low], [high - mid]], fmt="o", capsize=4, color="black")
            ax.annotate(
                f"seeds {','.join(map(str, r['seeds']))}",
                (epochs, high),
                textcoords="offset points",
                xytext=(4, 2),
                fontsize=7,
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("training epochs")
        ax.set_ylabel("Std-CoT - KPOD (points)")
        ax.set_title("SVAMP dev+test (300), SmolLM2-135M + LoRA, 160 rationales", fontsize=8)
        ax.set_xticks([e for e, _ in rows])
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=150)
        print(f"figure: {args.png}")


if __name__ == "__main__":
    main()
