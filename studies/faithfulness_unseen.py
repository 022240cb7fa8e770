"""Are the token weights keypoints, on rationales the weighting module never saw? (issue 26)

Each run folder's trained weighting module (weights/module.pt) weighs the first correct GPT-3.5
rationale of SVAMP training questions that are not among the run's own (MCC-KD's 700 questions; the
study uses 160); the deletion test then removes the top / bottom tokens by w, random ones and digits
first, at each fraction, judged by the run's student. Prints, per run and fraction, the mean damage
of each deletion with its standard error and the top/heuristic and top/random ratios with bootstrap
standard errors (1000 resamples of rationales). The judge's scores of texts that do not depend on the
weights (intact, random, heuristic) are cached and shared between runs.

    KPOD_DATA_DIR=../shared/data python studies/faithfulness_unseen.py studies/out/svamp_study_e6/kpod-s{0,1,2} \
        --questions 200 --fractions 0.05,0.1 --json studies/results/faithfulness_unseen.json
    KPOD_DATA_DIR=../shared/data python studies/faithfulness_unseen.py RUN --smoke     # 4 rationales, 1 draw
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kpod.artifacts import RunPaths, rationale_key, read_rationales
from kpod.config import load_config
from kpod.data import load_dataset_splits
from kpod.data.datasets import required_data_dir
from kpod.teacher.importers import import_rationales, reference_rationales
from kpod.weighting.data import WeightingItem
from kpod.weighting.faithfulness import Judge, deletion_test, ratio_se
from kpod.weighting.train import export_weights, load_weighting_module


def unseen_rationales(run: Path, root: Path, cfg, questions: int) -> list[dict]:
    """One correct rationale of up to `questions` training questions the run never used: the first
    correct MCC-KD GPT-3.5 rationale (SVAMP), or for a run taught by the dataset's worked solutions
    (teacher.kind=reference) the worked solution."""
    seen = {r["id"] for r in read_rationales(RunPaths(run).rationales("train"), include_incorrect=True)}
    train = [q for q in load_dataset_splits(cfg.dataset, root, cfg.data.split_source).train if q.id not in seen]
    if cfg.teacher.kind == "reference":
        records = reference_rationales(train)
    else:
        records, _ = import_rationales(root / "splits_mcc_kd/SVAMP/train.json", train, "mcc_kd")
    chosen: dict[str, dict] = {}
    for r in records:
        if r["correct"] and r["id"] not in chosen and r["steps"]:
            chosen[r["id"]] = r
    return list(chosen.values())[:questions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="KPOD run folders with a trained weighting module")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--fractions", default="0.05,0.1")
    parser.add_argument("--draws", type=int, default=3, help="random deletions per rationale")
    parser.add_argument("--json", help="write the results (per-rationale damages included) here")
    parser.add_argument("--cache", help="judge cache file (default: beside --json)")
    parser.add_argument("--smoke", action="store_true", help="4 rationales, one fraction, 1 draw")
    args = parser.parse_args()
    if args.smoke:
        args.questions, args.fractions, args.draws = 4, "0.1", 1
    root = required_data_dir()
    cache_file = Path(args.cache or (Path(args.json).with_suffix(".judge_cache.json") if args.json else "/nonexistent"))
    cache = {tuple(k): v for k, v in json.loads(cache_file.read_text())} if cache_file.is_file() else {}
    results = {}
    for run in map(Path, args.runs):
        cfg = load_config(RunPaths(run).config_snapshot("train_token_weighting"), {"output_dir": str(run)})
        rows = unseen_rationales(run, root, cfg, args.questions)
        model, collator = load_weighting_module(run)
        items = [WeightingItem(rationale_key(r), r["rationale"], r["steps"], r["question"], r["gold"]) for r in rows]
        weights = export_weights(model, collator, items)
        del model
        by_key = {rationale_key(r): r for r in rows}
        judge = Judge(cfg.student.model)  # loaded once for every fraction
        for fraction in (float(f) for f in args.fractions.split(",")):
            result = deletion_test(
                weights,
                by_key,
                judge,
                fraction=fraction,
                draws=args.draws,
                judge_cache=cache,
                progress=False,
            )
            per = result["per_rationale"]
            result["top_vs_heuristic_se"] = ratio_se(per, "top", "heuristic")
            result["top_vs_random_se"] = ratio_se(per, "top", "random")
            results[f"{run.name}@{fraction:g}"] = result
            mean, sem = result["mean_damage"], result["sem_damage"]
            print(
                f"{run.name} {100 * fraction:4.1f}% of tokens, {result['rationales']} unseen rationales: damage "
                + ", ".join(f"{v} {mean[v]:.3f}±{sem[v] or 0:.3f}" for v in ("top", "heuristic", "random", "bottom"))
                + f"; top/heuristic {result['top_vs_heuristic'] or float('nan'):.2f}±{result['top_vs_heuristic_se'] or float('nan'):.2f}"
                + f", top/random {result['top_vs_random'] or float('nan'):.2f}±{result['top_vs_random_se'] or float('nan'):.2f}",
                flush=True,
            )
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=1))
                cache_file.write_text(json.dumps([[list(k), v] for k, v in cache.items()]))


if __name__ == "__main__":
    main()
