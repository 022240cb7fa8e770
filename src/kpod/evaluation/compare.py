"""`kpod compare`: which arm is better, by how much, and how sure we are.

    kpod compare RUN [RUN ...] [--split test] [--group NAME=RUN,RUN ...] [--html FILE] [--json FILE]

Runs are grouped into arms (by default from their config: method and ablation settings; a run
with no trained student is "base"), several runs of an arm being seeds. Per arm: accuracy mean and
spread over seeds and the answer-format rate. Per pair of arms, paired on the same questions:
the accuracy difference with a paired bootstrap 95 % CI (questions resampled, seeds pooled: each
arm's accuracy is its mean over seeds on the resampled questions), the exact McNemar p-value per
seed pair and pooled over seed pairs, the discordant counts, and a question-level sign test (seeds
pooled per question: a question counts for A when A's runs get it right more often than B's, so a
question is one observation however many seeds there are). All of a pair's figures use the
same runs: those whose seed both arms have (when no seed is shared, the runs paired in order), so an
arm with seeds 0-2 against one with seed 0 alone is compared on seed 0.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import itertools
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from kpod.artifacts import RunPaths, read_json, write_json
from kpod.files import DataError, read_jsonl


@dataclass
class EvaluatedRun:
    path: Path
    arm: str
    seed: int | None
    correct: dict[str, bool]  # question id -> correct
    answer_sentence_rate: float
    content: str = ""  # digest of its predictions: a copy of a run under another name has the same
    setup: dict = field(default_factory=dict)  # dataset and student model, from its config
    rationale_loss: float | None = None  # held-out rationale loss (nats/token), mean over the splits that have it


@dataclass
class Arm:
    name: str
    runs: list[EvaluatedRun] = field(default_factory=list)


def arm_name(run_dir: Path) -> str:
    """method + the ablation settings that differ from KPOD's defaults, from the run's config."""
    snapshot = RunPaths(run_dir).config_snapshot("train")
    if not snapshot.is_file():
        return "base"
    cfg = yaml.safe_load(snapshot.read_text())
    if cfg["method"] == "std-cot":
        return "std-cot"
    parts = ["kpod"]
    if cfg["train"].get("uniform_weights"):
        parts.append("uniform-weights")
    elif cfg["train"].get("weight_floor"):
        parts.append(f"weight-floor-{cfg['train']['weight_floor']:g}")
    if not cfg["difficulty"].get("use_weights", True):
        parts.append("no-weights-in-difficulty")
    if not cfg["schedule"].get("progressive", True):
        parts.append("no-schedule")
    elif cfg["schedule"].get("kind", "kpod") != "kpod":
        parts.append(f"schedule-{cfg['schedule']['kind']}")
    if cfg["schedule"].get("beta", 12.0) == 0:
        parts.append("no-diversity")
    return "/".join(parts)


def load_run(run_dir: str | Path, split: str, arm: str | None = None) -> EvaluatedRun:
    """A run's per-question correctness on `split`; several splits joined by commas (dev,test) are pooled,
    each question id prefixed by its split."""
    run_dir = Path(run_dir)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    rows: list[dict] = []
    digest = hashlib.sha256()
    for name in splits:
        predictions = RunPaths(run_dir).eval_dir(name) / "predictions.jsonl"
        if not predictions.is_file():
            raise DataError(
                f"{predictions}: not found; run `kpod evaluate --output-dir {run_dir}` on the {name} split first"
            )
        digest.update(predictions.read_bytes())
        part = read_jsonl(predictions)
        if not part:
            raise DataError(f"{predictions}: no predictions")
        rows += [{**r, "id": f"{name}/{r['id']}" if len(splits) > 1 else r["id"]} for r in part]
    losses = []
    for name in splits:
        metrics = RunPaths(run_dir).eval_dir(name) / "metrics.json"
        loss = (read_json(metrics, "rerun `kpod evaluate`").get("rationale_loss") or {}) if metrics.is_file() else {}
        if loss.get("mean") is not None:
            losses.append(loss["mean"])
    seed, setup = None, {}
    for stage in ("train", "evaluate"):
        snapshot = RunPaths(run_dir).config_snapshot(stage)
        if snapshot.is_file():
            config = yaml.safe_load(snapshot.read_text())
            seed = config.get("seed")
            setup = {"dataset": config.get("dataset"), "student": (config.get("student") or {}).get("model")}
            break
    return EvaluatedRun(
        run_dir,
        arm or arm_name(run_dir),
        seed=seed,
        correct={str(r["id"]): bool(r["correct"]) for r in rows},
        answer_sentence_rate=sum(bool(r.get("answer_sentence")) for r in rows) / len(rows),
        content=digest.hexdigest(),
        setup=setup,
        rationale_loss=statistics.mean(losses) if len(losses) == len(splits) else None,
    )


def group_runs(runs: list[EvaluatedRun]) -> list[Arm]:
    arms: dict[str, Arm] = {}
    for run in runs:
        arms.setdefault(run.arm, Arm(run.arm)).runs.append(run)
    questions = set(runs[0].correct)
    for run in runs[1:]:
        if set(run.correct) != questions:
            raise DataError(
                f"{run.path} and {runs[0].path} were evaluated on different questions "
                f"({len(run.correct)} vs {len(questions)}, {len(set(run.correct) ^ questions)} not shared); "
                "compare runs evaluated on the same split and question set"
            )
    return list(arms.values())


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def discordant(a: EvaluatedRun, b: EvaluatedRun) -> tuple[int, int]:
    """(questions a gets right and b wrong, questions b gets right and a wrong)."""
    return (
        sum(a.correct[q] and not b.correct[q] for q in a.correct),
        sum(b.correct[q] and not a.correct[q] for q in a.correct),
    )


def correctness_matrix(runs: list[EvaluatedRun], questions: list[str]) -> np.ndarray:
    """(runs, questions) of 0/1."""
    return np.array([[run.correct[q] for q in questions] for run in runs], dtype=float)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(difference, low, high): mean accuracy of a minus b (each averaged over its runs), with the
    95 % percentile interval of the difference over question resamples."""
    per_question = a.mean(0) - b.mean(0)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(per_question), size=(resamples, len(per_question)))
    means = per_question[picks].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(per_question.mean()), float(low), float(high)


def question_sign_test(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(questions a wins, questions b wins, exact two-sided sign-test p): per question, a's runs' mean
    correctness against b's (runs, questions); ties (both arms equally often right) drop out."""
    per_question = a.mean(0) - b.mean(0)
    wins, losses = int((per_question > 0).sum()), int((per_question < 0).sum())
    return wins, losses, mcnemar_exact(wins, losses)


def pair_by_seed(a: Arm, b: Arm) -> list[tuple[EvaluatedRun, EvaluatedRun]]:
    """Runs of two arms with the same seed; arms whose seeds do not match are paired in order."""
    by_seed = {r.seed: r for r in b.runs}
    pairs = [(r, by_seed[r.seed]) for r in a.runs if r.seed in by_seed]
    return pairs or list(zip(a.runs, b.runs))


def refuse_duplicates(runs: list[EvaluatedRun]) -> None:
    """A run counted twice makes a difference look surer than it is: the same folder, a copy of one
    (the same predictions) and two runs of one arm with the same seed are refused."""
    seen: dict = {}
    for run in runs:
        for key, what in (
            (("path", Path(run.path).resolve()), "is listed twice"),
            (("content", run.content), "has the same predictions as"),
            (("seed", run.arm, run.seed), f"is a second run of arm {run.arm} with seed {run.seed}, beside"),
        ):
            if key[-1] in (None, "") or key not in seen:
                seen.setdefault(key, run.path)
                continue
            first = next(r for r in runs if r.path == seen[key])
            differ = {k: (first.setup.get(k), v) for k, v in run.setup.items() if first.setup.get(k) != v}
            if key[0] == "seed" and differ:
                name, (a, b) = next(iter(differ.items()))
                if name == "dataset":
                    raise DataError(
                        f"{first.path} and {run.path} are runs on different datasets ({a} vs {b}): compare runs "
                        "evaluated on the same questions"
                    )
                raise DataError(
                    f"{first.path} and {run.path} are both arm {run.arm} with seed {run.seed} but have different "
                    f"students ({a} vs {b}), so they are different arms: name them, e.g. "
                    f"--group {Path(str(a)).name}={first.path} --group {Path(str(b)).name}={run.path}"
                )
            other = "" if key[0] == "path" else f" {seen[key]}"
            raise DataError(f"{run.path} {what}{other}: each run may be counted once; leave the duplicate out")


def compare_runs(runs: list[EvaluatedRun], resamples: int = 10_000) -> dict:
    refuse_duplicates(runs)
    arms = group_runs(runs)
    questions = sorted(runs[0].correct)
    arm_rows = []
    for arm in arms:
        accuracies = [100.0 * sum(r.correct.values()) / len(r.correct) for r in arm.runs]
        arm_rows.append(
            {
                "arm": arm.name,
                "runs": [str(r.path) for r in arm.runs],
                "seeds": [r.seed for r in arm.runs],
                "accuracy_mean": statistics.mean(accuracies),
                "accuracy_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                "accuracies": accuracies,
                "answer_sentence_rate": statistics.mean(r.answer_sentence_rate for r in arm.runs),
                "rationale_loss": (
                    statistics.mean(r.rationale_loss for r in arm.runs)
                    if all(r.rationale_loss is not None for r in arm.runs)
                    else None
                ),
            }
        )
    pair_rows = []
    for a, b in itertools.combinations(arms, 2):
        pairs = pair_by_seed(a, b)
        matrix_a = correctness_matrix([ra for ra, _ in pairs], questions)
        matrix_b = correctness_matrix([rb for _, rb in pairs], questions)
        diff, low, high = paired_bootstrap(matrix_a, matrix_b, resamples)
        questions_a, questions_b, p_questions = question_sign_test(matrix_a, matrix_b)
        per_seed = []
        for ra, rb in pairs:
            wins, losses = discordant(ra, rb)
            per_seed.append(
                {
                    "seed_a": ra.seed,
                    "seed_b": rb.seed,
                    "a_only": wins,
                    "b_only": losses,
                    "p": mcnemar_exact(wins, losses),
                }
            )
        wins, losses = sum(s["a_only"] for s in per_seed), sum(s["b_only"] for s in per_seed)
        pair_rows.append(
            {
                "a": a.name,
                "b": b.name,
                "difference": 100 * diff,
                "ci_low": 100 * low,
                "ci_high": 100 * high,
                "a_only": wins,
                "b_only": losses,
                "p_pooled": mcnemar_exact(wins, losses),
                "questions_a_better": questions_a,
                "questions_b_better": questions_b,
                "p_questions": p_questions,
                "per_seed": per_seed,
            }
        )
    return {"questions": len(questions), "arms": arm_rows, "pairs": pair_rows}


def format_markdown(result: dict) -> str:
    lines = [
        f"{result['questions']} questions",
        "",
        "| arm | runs | accuracy mean | sd | held-out rationale loss | answer sentence |",
        "|---|---|---|---|---|---|",
    ]
    for a in result["arms"]:
        sd = "" if a["accuracy_sd"] is None else f"{a['accuracy_sd']:.2f}"
        loss = "" if a.get("rationale_loss") is None else f"{a['rationale_loss']:.3f}"
        lines.append(
            f"| {a['arm']} | {len(a['runs'])} | {a['accuracy_mean']:.2f}% | {sd} | {loss} | "
            f"{100 * a['answer_sentence_rate']:.0f}% |"
        )
    lines += [
        "",
        "| A vs B | A - B (points) | 95% CI (paired bootstrap) | A only / B only | McNemar p pooled | p per seed "
        "| questions A / B better | sign test p (questions) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["pairs"]:
        seeds = ", ".join(
            f"s{s['seed_a']}" + ("" if s["seed_a"] == s["seed_b"] else f"/s{s['seed_b']}") + f" {s['p']:.3g}"
            for s in p["per_seed"]
        )
        lines.append(
            f"| {p['a']} vs {p['b']} | {p['difference']:+.2f} | [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] | "
            f"{p['a_only']} / {p['b_only']} | {p['p_pooled']:.3g} | {seeds} | "
            f"{p['questions_a_better']} / {p['questions_b_better']} | {p['p_questions']:.3g} |"
        )
    return "\n".join(lines)


def _difference_plot(result: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = result["pairs"]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(pairs) + 1.2))
    for i, p in enumerate(pairs):
        ax.errorbar(
            p["difference"],
            i,
            xerr=[[p["difference"] - p["ci_low"]], [p["ci_high"] - p["difference"]]],
            fmt="o",
            capsize=4,
            color="tab:red" if p["ci_low"] > 0 or p["ci_high"] < 0 else "tab:blue",
        )
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(pairs)), [f"{p['a']} vs {p['b']}" for p in pairs])
    ax.set_xlabel("accuracy difference A - B (points), 95% paired bootstrap CI")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_html(result: dict, path: Path) -> None:
    table = html.escape(format_markdown(result))
    plot = f'<img alt="differences" src="data:image/png;base64,{_difference_plot(result)}">' if result["pairs"] else ""
    Path(path).write_text(
        f"<!doctype html><meta charset=utf-8><title>kpod compare</title>"
        f"<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}</style>"
        f"<h1>Comparison of runs</h1>{plot}<pre>{table}</pre>"
    )


def compare(
    run_dirs: list[str],
    split: str = "test",
    groups: list[str] | None = None,
    html_path: str | None = None,
    json_path: str | None = None,
    echo: bool = True,
) -> dict:
    """Load, group, compare; writes the JSON (and HTML) and a `comparison.json` link in each run folder."""
    runs = [load_run(r, split) for r in run_dirs]
    for spec in groups or []:
        name, _, members = spec.partition("=")
        if not name or not members:
            raise ValueError(f"--group {spec!r}: expected NAME=RUN[,RUN...]")
        runs += [load_run(m, split, arm=name) for m in members.split(",")]
    if not runs:
        raise ValueError("no runs to compare")
    result = compare_runs(runs)
    result["split"] = split
    if echo:
        print(format_markdown(result))
    if json_path:
        write_json(Path(json_path), result)
    if html_path:
        write_html(result, Path(html_path))
    for run in runs:  # the report page of each run links to its comparison
        write_json(
            run.path / "comparison.json",
            {
                "html": str(Path(html_path).resolve()) if html_path else None,
                "json": str(Path(json_path).resolve()) if json_path else None,
                "split": split,
                "arm": run.arm,
                "arms": [{"arm": a["arm"], "runs": a["runs"]} for a in result["arms"]],
            },
        )
    return result
