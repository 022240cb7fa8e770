"""The multi-seed SVAMP study: does KPOD beat Std-CoT, by how much, and how sure are we?

SmolLM2-135M-Instruct + LoRA, trained on SVAMP training questions with the real GPT-3.5-Turbo
rationales of MCC-KD (the first correct one of each question; the same data, epochs, learning rate,
LoRA and curriculum phases for every arm). Every run is evaluated, without model selection, on the
300 held-out SVAMP questions (MCC-KD dev + test) and on the ASDiv test split (314, out of
distribution). Arms: base, std-cot, kpod, kpod-uniform (no token weights), kpod-no-schedule and, after
the study, kpod-floor (train.weight_floor=0.5: every token keeps at least half of a full weight) and
kpod-added (the curriculum added before the full-rationale epochs, not in their place) and kpod-linear
(schedule.kind=linear, the control blind to difficulty and diversity); see svamp_smollm2.ARMS.

Runs go in the order of `--plan` (arm:seed), most informative first; each is a run folder under
--out, resumable (finished stages and evaluations are skipped). After each run its per-question
correctness goes to --csv-dir/<run>/<split>.csv (question id, correct, answer found, answer sentence) and, for KPOD
runs, the weighting stage's deletion test of its token weights (weights/quality.json) to
--csv-dir/<run>/quality.json. Then:

    kpod compare studies/out/svamp_study/* --split dev,test
    kpod compare studies/out/svamp_study/* --split test-asdiv

    KPOD_DATA_DIR=../shared/data python studies/svamp_study.py
"""

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from svamp_smollm2 import ARMS, STUDENT_SETTINGS, first_correct_rationales  # studies/ is on sys.path as a script

from kpod import pipeline
from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.data.datasets import required_data_dir
from kpod.files import read_jsonl

PLAN = "std-cot:0,kpod:0,std-cot:1,kpod:1,std-cot:2,kpod:2,kpod-uniform:0,kpod-no-schedule:0,base:0"


def write_correctness(run_dir: Path, eval_name: str, out: Path) -> None:
    rows = read_jsonl(RunPaths(run_dir).eval_dir(eval_name) / "predictions.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "correct", "answer_found", "answer_sentence"])
        for r in rows:
            writer.writerow([r["id"], int(r["correct"]), int(r["prediction"] is not None), int(r["answer_sentence"])])


def evaluated_after_training(run_dir: Path, eval_name: str) -> bool:
    metrics = RunPaths(run_dir).eval_dir(eval_name) / "metrics.json"
    student = RunPaths(run_dir).student / "kpod_student.json"
    return metrics.is_file() and (not student.is_file() or metrics.stat().st_mtime > student.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=PLAN, help="arm:seed,... in the order to run")
    parser.add_argument("--questions", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--phases", type=int, default=8, help="curriculum phases over the run (schedule.phases)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument(
        "--evaluations", default="test,dev,test-asdiv", help="which of test, dev (SVAMP), test-asdiv to run now"
    )
    parser.add_argument("--out", default="studies/out/svamp_study")
    parser.add_argument("--csv-dir", default="studies/results/svamp_study")
    parser.add_argument(
        "--upstream-from",
        help="a study folder whose kpod-s<seed> runs lend their stages before train to this study's KPOD arms "
        "(token weights do not depend on the training length); default: ablation arms borrow from --out",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="a setting for every run: key=value"
    )
    args = parser.parse_args()
    root = required_data_dir()
    out, csv_dir = Path(args.out), Path(args.csv_dir)
    # the lender's rationale file: the same path keeps the lender's generate stage (and all after it) valid
    teacher_file = Path(args.upstream_from or out) / "gpt35_first_correct.jsonl"
    if not teacher_file.is_file():
        teacher_file.parent.mkdir(parents=True, exist_ok=True)
        print(f"{first_correct_rationales(root, teacher_file, args.questions)} questions with a correct rationale")
    common = [
        "dataset=svamp",
        "student.model=smollm2",
        "teacher.kind=file",
        f"teacher.import_path={teacher_file}",
        f"train.epochs={args.epochs}",
        f"schedule.phases={args.phases}",
        f"train.learning_rate={args.lr}",
        *STUDENT_SETTINGS,
        f"eval.max_new_tokens={args.max_new_tokens}",
        "weighting.max_rationale_tokens=192",
        "weighting.max_question_tokens=96",
        *args.overrides,
    ]
    for item in args.plan.split(","):
        arm, seed = item.split(":")
        name = f"{arm}-s{seed}"
        run_dir = out / name
        overrides = common + ARMS[arm] + [f"seed={seed}", f"output_dir={run_dir}"]
        cfg = load_config(overrides=overrides)
        asdiv = load_config(overrides=overrides + ["dataset=asdiv"])
        model_path = "smollm2" if arm == "base" else None
        start = time.time()
        lender = None
        if arm.startswith("kpod-") or (arm == "kpod" and args.upstream_from):  # every ablation arm is kpod-<name>
            lender = Path(args.upstream_from or out) / f"kpod-s{seed}"  # its stages before train, where they hold
        trained = (run_dir / "train" / "summary.json").is_file() and (run_dir / "student").is_dir()
        if arm != "base" and not trained:  # a trained run is not retrained (even by a later kpod version)
            pipeline.full_pipeline(cfg, reuse_from=lender if lender and lender.is_dir() else None)
        evaluations = [(cfg, "test", None), (cfg, "dev", None), (asdiv, "test", "asdiv")]
        for run_cfg, split, tag in evaluations:
            eval_name = split if tag is None else f"{split}-{tag}"
            if eval_name not in args.evaluations.split(","):
                continue
            if not evaluated_after_training(run_dir, eval_name):
                pipeline.evaluate(run_cfg, model_path=model_path, split=split, tag=tag)
            write_correctness(run_dir, eval_name, csv_dir / name / f"{eval_name}.csv")
        quality = RunPaths(run_dir).weights_quality
        if arm.startswith("kpod") and quality.is_file():  # the weighting stage's own deletion test (5 %, 10 %)
            shutil.copy(quality, csv_dir / name / "quality.json")
        took = time.time() - start
        seconds_file = run_dir / "bench_seconds.json"
        if not seconds_file.is_file() or took > 60:  # keep the time of the call that did the work
            seconds_file.write_text(json.dumps({"seconds": took}))
        shutil.copy(seconds_file, csv_dir / name / "seconds.json")
        accuracies = {
            e: json.loads((RunPaths(run_dir).eval_dir(e) / "metrics.json").read_text())["accuracy"]
            for e in ("test", "dev", "test-asdiv")
            if (RunPaths(run_dir).eval_dir(e) / "metrics.json").is_file()
        }
        print(f"{name}: {accuracies} ({took:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
