"""Answer extraction on real teacher rationales: the share that yields the gold answer.

    KPOD_DATA_DIR=../shared/data python studies/extraction_real_rationales.py [--show-misses N]

GPT-3.5-Turbo rationales of MCC-KD (SVAMP train, 10 per question) and PaLM-540B rationales of
Distilling step-by-step (SVAMP and CommonsenseQA, train and test), matched to our question records.
"""

import argparse

from kpod.data import load_dataset_splits
from kpod.data.datasets import required_data_dir
from kpod.teacher.importers import import_rationales


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--show-misses", type=int, default=0)
    args = parser.parse_args()
    root = required_data_dir()
    svamp = load_dataset_splits("svamp", root, "official").test  # all 1000 SVAMP questions
    csqa = load_dataset_splits("commonsenseqa", root, "official")
    sources = [
        ("GPT-3.5 (MCC-KD) SVAMP train", root / "splits_mcc_kd/SVAMP/train.json", "mcc_kd", "train", svamp),
        ("PaLM (DSS) SVAMP train", root / "rationales/palm_dss/svamp", "palm_dss", "train", svamp),
        ("PaLM (DSS) SVAMP test", root / "rationales/palm_dss/svamp", "palm_dss", "test", svamp),
        ("PaLM (DSS) CQA train", root / "rationales/palm_dss/cqa", "palm_dss", "train", csqa.train + csqa.test),
        ("PaLM (DSS) CQA test", root / "rationales/palm_dss/cqa", "palm_dss", "test", csqa.train + csqa.test),
    ]
    print(f"{'source':<32}{'rationales':>11}{'unmatched':>10}{'answer found':>14}{'= gold':>9}")
    for name, path, fmt, split, questions in sources:
        records, counts = import_rationales(path, questions, fmt, split)
        unmatched = counts["read"] - counts["kept"]
        found = sum(r["answer"] is not None for r in records)
        correct = sum(r["correct"] for r in records)
        print(
            f"{name:<32}{len(records):>11}{unmatched:>10}{100 * found / len(records):>13.1f}%{100 * correct / len(records):>8.1f}%"
        )
        for r in [r for r in records if not r["correct"]][: args.show_misses]:
            print(f"   gold {r['gold']!r} got {r['answer']!r}: ...{r['raw'][-160:]!r}")


if __name__ == "__main__":
    main()
