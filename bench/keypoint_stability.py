"""Do weighting runs that differ only in their seed find the same keypoints? (issue 36)

Runs `kpod train_token_weighting` with each seed on the same rationales (the first correct GPT-3.5
rationale of the first --questions SVAMP training questions) and the same held-out questions (chosen
by a hash of the id, not by the seed). On the rationales every module held out it prints:
  - per pair of seeds, the mean per-rationale Spearman correlation of w and the Jaccard overlap of the
    top-5 % token sets;
  - each seed's deletion-test ratios at 5 % and 10 %, from the stage's own weights/quality.json;
  - the stage's cost per 1000 rationales as a ratio to one Std-CoT epoch on 1000 rationales, both timed
    in this command (Std-CoT: one epoch on --stdcot-questions of the same rationales).

    KPOD_DATA_DIR=../shared/data python bench/keypoint_stability.py --json bench/results/keypoint_stability.json
    KPOD_DATA_DIR=../shared/data python bench/keypoint_stability.py --set weighting.samples=4 --tag samples4
    KPOD_DATA_DIR=../shared/data python bench/keypoint_stability.py --measured-only --json ...  # what is done so far
    KPOD_DATA_DIR=../shared/data python bench/keypoint_stability.py --smoke     # a tiny LLaMA, 12 questions

Resumable: each seed is a run folder under --out/<tag>-s<seed>, and finished stages are skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from common import build_shaped_model, data_root  # bench/common.py: bench/ is on sys.path when a bench runs
from scipy.stats import spearmanr

from kpod import pipeline
from kpod.artifacts import RunPaths, read_json, read_jsonl
from kpod.config import load_config
from kpod.data import load_dataset_splits
from kpod.files import write_jsonl
from kpod.teacher.importers import first_correct_per_question, import_rationales


def top_set(weights: list[float], fraction: float) -> set[int]:
    k = max(1, round(fraction * len(weights)))
    return set(sorted(range(len(weights)), key=lambda i: (-weights[i], i))[:k])


def agreement(a: dict[str, list[float]], b: dict[str, list[float]], fraction: float = 0.05) -> dict:
    """Mean per-rationale Spearman of w and Jaccard of the top-`fraction` token sets, over shared keys."""
    rhos, jaccards = [], []
    for key in sorted(a.keys() & b.keys()):
        x, y = a[key], b[key]
        if len(x) > 2 and len(set(x)) > 1 and len(set(y)) > 1:
            rhos.append(spearmanr(x, y).statistic)
        ta, tb = top_set(x, fraction), top_set(y, fraction)
        jaccards.append(len(ta & tb) / len(ta | tb))
    return {
        "rationales": len(jaccards),
        "spearman": statistics.mean(rhos) if rhos else None,
        "jaccard_top": statistics.mean(jaccards) if jaccards else None,
    }


def held_out_weights(run: Path) -> dict[str, list[float]]:
    paths = RunPaths(run)
    keys = set(read_json(paths.weights_heldout)["keys"])
    return {r["key"]: r["weights"] for r in read_jsonl(paths.weights) if r["key"] in keys and r["weights"]}


def first_correct_rationales(root: Path, out: Path, questions: int) -> None:
    """The teacher file: the first correct GPT-3.5 rationale (MCC-KD) of the first `questions` SVAMP training questions."""
    records, _ = import_rationales(
        root / "splits_mcc_kd/SVAMP/train.json", load_dataset_splits("svamp", root).train, "mcc_kd"
    )
    write_jsonl(out, first_correct_per_question(records, questions))


def stdcot_epoch_seconds_per_1000(common: list[str], root: Path, out: Path, questions: int) -> float:
    """One Std-CoT epoch on the first `questions` of the same rationales, with the study's student settings."""
    teacher_file = out / f"gpt35_first_correct_{questions}.jsonl"
    if not teacher_file.is_file():
        first_correct_rationales(root, teacher_file, questions)
    cfg = load_config(
        overrides=common
        + [
            "method=std-cot",
            f"teacher.import_path={teacher_file}",
            f"output_dir={out / f'std-cot-epoch-{questions}'}",
            "train.epochs=1",
            "train.save_checkpoints=false",
        ]
    )
    pipeline.generate(cfg)
    pipeline.train(cfg)
    summary = read_json(RunPaths(cfg.run_dir).train_summary)
    return 1000 * summary["seconds"] / summary["examples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=360)
    parser.add_argument("--holdout", default="200", help="weighting.holdout: a count, or a fraction below 1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--student", default="smollm2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="more weighting settings")
    parser.add_argument("--tag", default="default", help="names this setting's run folders")
    parser.add_argument("--stdcot-questions", type=int, default=32)
    parser.add_argument("--out", default="bench/out/keypoint_stability")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="a tiny LLaMA, 12 questions, 6 held out, seeds 0-1")
    parser.add_argument(
        "--measured-only",
        action="store_true",
        help="run nothing: report what the run folders under --out hold so far (seeds without weights, a quality "
        "check not yet written and the Std-CoT epoch not yet timed are left out)",
    )
    args = parser.parse_args()
    root, out = data_root(), Path(args.out)
    if args.smoke:
        args.questions, args.holdout, args.seeds, args.stdcot_questions = 12, "6", "0,1", 4
        args.student = str(build_shaped_model("tiny", out / "tiny-llama", root))
    teacher_file = out / f"gpt35_first_correct_{args.questions}.jsonl"
    if not teacher_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        first_correct_rationales(root, teacher_file, args.questions)
    common = [
        "dataset=svamp",
        f"student.model={args.student}",
        "teacher.kind=file",
        f"teacher.import_path={teacher_file}",
        "train.batch_size=4",
        "train.eval_every=0",
        "student.lora_r=16",
        "student.lora_alpha=32",
        "student.max_input_tokens=320",
        "student.max_target_tokens=256",
        "weighting.max_rationale_tokens=192",
        "weighting.max_question_tokens=96",
        f"weighting.holdout={args.holdout}",
    ]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, results = {}, {"settings": args.overrides, "questions": args.questions, "holdout": args.holdout, "seeds": {}}
    for seed in seeds:
        cfg = load_config(
            overrides=common + args.overrides + [f"seed={seed}", f"output_dir={out / f'{args.tag}-s{seed}'}"]
        )
        paths = RunPaths(cfg.run_dir)
        if not args.measured_only:
            pipeline.generate(cfg)
            pipeline.train_token_weighting(cfg)
        elif not paths.weights_heldout.is_file():
            continue
        runs[seed] = held_out_weights(cfg.run_dir)
        if not paths.weights_quality.is_file():  # --measured-only: the stage is still checking its weights
            continue
        summary, quality = read_json(paths.weights_summary), read_json(paths.weights_quality)
        results["seeds"][seed] = {
            "trained_on": summary["trained_on"],
            "fit_seconds": summary["seconds"],
            "line": quality["line"],
            "verdict": quality["verdict"],
            **{
                f"{name}@{fraction}": r[name]
                for fraction, r in quality["fractions"].items()
                for name in ("top_vs_random", "top_vs_heuristic", "top_vs_heuristic_se")
            },
        }
        print(f"seed {seed}: {quality['line']} ({quality['verdict']}; fit {summary['seconds']:.0f} s)", flush=True)
    seeds = sorted(runs)
    results["pairs"] = {f"{a}-{b}": agreement(runs[a], runs[b]) for a, b in itertools.combinations(seeds, 2)}
    for pair, r in results["pairs"].items():
        print(
            f"seeds {pair}: Spearman of w {r['spearman']:.3f}, top-5 % Jaccard {r['jaccard_top']:.3f} ({r['rationales']} rationales)"
        )
    timed = RunPaths(out / f"std-cot-epoch-{args.stdcot_questions}").train_summary.is_file()
    if results["seeds"] and (timed or not args.measured_only):
        per_1000 = statistics.mean(
            1000 * r["fit_seconds"] / r["trained_on"] for r in results["seeds"].values() if r["trained_on"]
        )
        stdcot = stdcot_epoch_seconds_per_1000(common, root, out, args.stdcot_questions)
        results["cost"] = {"weighting_per_1000": per_1000, "stdcot_epoch_per_1000": stdcot, "ratio": per_1000 / stdcot}
        print(f"token weighting per 1000 rationales / one Std-CoT epoch on 1000 rationales: {per_1000 / stdcot:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
