"""How a run's token weights treat numbers and operators on real rationales: mean w of tokens that
contain a digit or one of + - * / = against the other tokens, and the ROC AUC of that ranking.

    python studies/weight_stats.py RUN_DIR [RUN_DIR ...]

(RUN_DIR holds weights/weights.jsonl, e.g. studies/out/svamp_smollm2/q160-e3-s0/kpod.)
"""

import argparse
import json
import statistics
from pathlib import Path

from sklearn.metrics import roc_auc_score

from kpod.weighting.faithfulness import is_digit_or_operator


def weight_stats(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "weights" / "weights.jsonl").open()]
    pairs = [(is_digit_or_operator(t), w) for r in rows for t, w in zip(r["tokens"], r["weights"])]
    numbers = [w for is_num, w in pairs if is_num]
    others = [w for is_num, w in pairs if not is_num]
    every = numbers + others
    return {
        "rationales": len(rows),
        "tokens": len(every),
        "mean_w": statistics.mean(every),
        "sd_w": statistics.pstdev(every),
        "mean_w_numbers_operators": statistics.mean(numbers),
        "mean_w_other": statistics.mean(others),
        "roc_auc_numbers_vs_rest": roc_auc_score([1] * len(numbers) + [0] * len(others), every),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        s = weight_stats(run)
        print(
            f"{run}: {s['rationales']} rationales, {s['tokens']} tokens; mean w {s['mean_w']:.3f} (sd {s['sd_w']:.3f}); "
            f"numbers/operators {s['mean_w_numbers_operators']:.3f} vs other tokens {s['mean_w_other']:.3f}; "
            f"ROC AUC numbers vs rest {s['roc_auc_numbers_vs_rest']:.3f}"
        )


if __name__ == "__main__":
    main()
