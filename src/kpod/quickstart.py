"""The CPU quickstart: KPOD and Std-CoT on the same data, and the base model, in one table.

    python -m kpod.quickstart [--config configs/cpu-quickstart.yaml] [--set key=value ...]

Every KPOD stage runs (generate, token weighting, difficulties, clusters and schedule, training,
evaluation) in outputs/quickstart/kpod; the Std-CoT baseline trains on the same rationales with
the same settings in outputs/quickstart/std-cot; the untrained base model is evaluated on the same
held-out questions. Re-running skips finished stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from kpod import pipeline
from kpod.artifacts import RunPaths
from kpod.config import load_config
from kpod.evaluation.compare import compare
from kpod.files import DataError
from kpod.report import write_report
from kpod.weighting.faithfulness import format_quality

DEFAULT_CONFIG = Path("configs/cpu-quickstart.yaml")
log = logging.getLogger(__name__)


def run(config: Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> list[dict]:
    overrides = overrides or []
    kpod_cfg = load_config(config, overrides)
    root = kpod_cfg.run_dir.parent
    rows = []

    start = time.time()
    pipeline.full_pipeline(kpod_cfg)
    rows.append(("KPOD", kpod_cfg, time.time() - start))

    std_cfg = load_config(config, overrides + ["method=std-cot", f"output_dir={root / 'std-cot'}"])
    start = time.time()
    pipeline.full_pipeline(std_cfg)
    rows.append(("Std-CoT", std_cfg, time.time() - start))

    base_cfg = load_config(config, overrides + [f"output_dir={root / 'base'}"])
    start = time.time()
    metrics_file = RunPaths(base_cfg.run_dir).eval_dir(base_cfg.eval.split) / "metrics.json"
    if not metrics_file.is_file():
        pipeline.evaluate(base_cfg, model_path=base_cfg.student.model)
    rows.insert(0, ("base model", base_cfg, time.time() - start))

    table = []
    for name, cfg, seconds in rows:
        metrics = json.loads((RunPaths(cfg.run_dir).eval_dir(cfg.eval.split) / "metrics.json").read_text())
        loss = metrics.get("rationale_loss") or {}
        table.append(
            {
                "arm": name,
                "accuracy": metrics["accuracy"],
                "correct": metrics["correct"],
                "total": metrics["total"],
                "rationale_loss": loss.get("mean"),
                "rationale_loss_se": loss.get("se"),
                "answer_sentence": metrics["answer_sentence"],
                "seconds_this_run": round(seconds, 1),
                "run_dir": str(cfg.run_dir),
            }
        )
    (root / "summary.json").write_text(json.dumps(table, indent=1))
    print(format_table(table, kpod_cfg))
    print(format_example(rows))
    print("\nAre the token weights keypoints? (the weighting stage's own check, on rationales it never trained on)")
    print(format_quality(json.loads(RunPaths(kpod_cfg.run_dir).weights_quality.read_text())))
    try:  # the report draws every arm from the comparison
        compare(
            [],
            split=kpod_cfg.eval.split,
            groups=[f"{name}={cfg.run_dir}" for name, cfg, _ in rows],
            json_path=str(root / "comparison.json"),
            html_path=str(root / "comparison.html"),
            echo=False,
        )
    except DataError as error:  # e.g. two arms answered every question alike: the report shows KPOD alone
        log.warning("no comparison of the arms: %s", error)
    report = write_report(kpod_cfg.run_dir)
    print(f"\nThe KPOD run's report (training loss, curriculum, token weights, accuracy): open {report.resolve()}")
    return table


def format_table(table: list[dict], cfg) -> str:
    lines = [
        f"\n{cfg.dataset} {cfg.eval.split} ({table[0]['total']} questions), student {cfg.student.model}",
        f"{'arm':<12}{'accuracy':>10}{'held-out rationale loss':>26}{'answer sentence':>17}{'time (s)':>10}",
    ]
    for row in table:
        loss = (
            "n/a"
            if row["rationale_loss"] is None
            else f"{row['rationale_loss']:.3f} ± {row['rationale_loss_se'] or 0:.3f}"
        )
        lines.append(
            f"{row['arm']:<12}{row['accuracy']:>9.1f}%{loss:>26}{str(row['answer_sentence']) + '/' + str(row['total']):>17}"
            f"{row['seconds_this_run']:>10.0f}"
        )
    lines += [
        "",
        "accuracy: share of questions whose final answer is right (a 135M student on a few dozen questions",
        "  rarely moves it; the paper's students are 760M-7B, trained for 20-100 epochs on thousands).",
        "held-out rationale loss: the student's loss (nats per token) on the worked solutions of these test",
        "  questions, which it never trained on; lower is better. Training shows here first.",
        "answer sentence: answers that end in 'Therefore, the answer is ...', the format it was taught.",
    ]
    return "\n".join(lines)


def format_example(rows: list[tuple[str, object, float]], width: int = 160) -> str:
    """The first test question with what each arm wrote, shortened."""
    lines = []
    for name, cfg, _ in rows:
        predictions = RunPaths(cfg.run_dir).eval_dir(cfg.eval.split) / "predictions.jsonl"
        first = json.loads(predictions.read_text().splitlines()[0])
        if not lines:
            lines += ["", f"one test question: {first['question'][:width]}", f"gold answer: {first['gold']}"]
        text = " ".join(str(first.get("output", "")).split())
        lines.append(f"  {name:<11} {text[:width] + (' ...' if len(text) > width else '')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.config, args.overrides)


if __name__ == "__main__":
    main()
