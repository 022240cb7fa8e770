"""`kpod compare` over committed per-question CSVs, for runs whose folders are gone (earlier sessions).

Each arm is NAME=DIR[,DIR...]: folders of `studies/svamp_study.py`'s CSVs (`<split>.csv` with id and
correct), the seed read from the folder name's `-s<seed>` ending. The same statistics as `kpod
compare` (paired bootstrap CI, exact McNemar p per seed and pooled), from kpod's own code.

    python studies/compare_csvs.py std-cot=studies/results/svamp_study/std-cot-s0 \
        kpod=studies/results/svamp_study/kpod-s0 --split dev,test --json out.json
"""

import argparse
import csv
import hashlib
import re
from pathlib import Path

from kpod.artifacts import write_json
from kpod.evaluation.compare import EvaluatedRun, compare_runs, format_markdown


def csv_run(folder: Path, arm: str, split: str) -> EvaluatedRun:
    splits = split.split(",")
    correct, sentences, digest = {}, 0, hashlib.sha256()
    for name in splits:
        path = folder / f"{name}.csv"
        digest.update(path.read_bytes())
        with path.open() as f:
            for row in csv.DictReader(f):
                correct[f"{name}/{row['id']}" if len(splits) > 1 else row["id"]] = row["correct"] == "1"
                sentences += row["answer_sentence"] == "1"
    seed = re.search(r"-s(\d+)$", folder.name)
    return EvaluatedRun(
        folder, arm, int(seed.group(1)) if seed else None, correct, sentences / len(correct), digest.hexdigest()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="+", metavar="NAME=DIR[,DIR...]")
    parser.add_argument("--split", default="dev,test")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for spec in args.arms:
        name, _, folders = spec.partition("=")
        runs += [csv_run(Path(f), name, args.split) for f in folders.split(",")]
    result = compare_runs(runs)
    result["split"] = args.split
    print(format_markdown(result))
    if args.json:
        write_json(Path(args.json), result)


if __name__ == "__main__":
    main()
