"""`kpod report <run folder>`: one self-contained HTML page and a Markdown twin.

Config, data counts, rationales coloured by token weight, the budget curve D(t) with the achieved
difficulty, per-phase cluster balance, training and dev curves, the final accuracy next to the
paper's Table 1 figure, and the predictions with the wrong ones first.
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from dataclasses import asdict
from pathlib import Path

import yaml

from kpod.artifacts import RunPaths, atomic_write_text, read_difficulties, read_json, read_schedule
from kpod.files import read_jsonl
from kpod.pages import HTML_STYLE, html_block, weight_examples
from kpod.stage_records import require_fresh

# Paper Table 1 (KPOD rows), accuracy in %.
PAPER_KPOD = {
    "llama-7b": {"gsm8k": 46.74, "asdiv": 71.02, "svamp": 68.67, "commonsenseqa": 77.89},
    "flan-t5-xl": {"gsm8k": 25.19, "asdiv": 33.76, "svamp": 34.67, "commonsenseqa": 88.04},
    "flan-t5-large": {"gsm8k": 22.46, "asdiv": 27.39, "svamp": 25.33, "commonsenseqa": 81.41},
}


def paper_figure(student: str, dataset: str) -> tuple[str, float] | None:
    name = student.lower()
    for key, row in PAPER_KPOD.items():
        if key in name or key.replace("-", "") in name.replace("-", "").replace("_", ""):
            return key, row[dataset]
    return None


def _json(path: Path):
    return (
        read_json(path, "delete it and rerun the stage that writes it, then `kpod report`") if path.is_file() else None
    )


def _jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def _figure(draw, panels: int = 1) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 9.6, 3.4), dpi=110, squeeze=False)
    draw(*axes[0])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _budget_plot(schedule: dict):
    def draw(ax):
        phases = [r["phase"] + 1 for r in schedule["table"]]
        ax.plot(phases, [r["budget"] for r in schedule["table"]], "o-", label="budget D(t)")
        ax.plot(phases, [r["achieved"] for r in schedule["table"]], "s--", label="achieved H(t)")
        ax.set_xlabel(f"curriculum phase (one {schedule.get('phase_unit', 'epoch')} each)")
        ax.set_xticks(phases)
        ax.set_ylabel("output difficulty")
        ax.legend()
        ax.set_title("Difficulty the student writes: budget and achieved")

    return draw


def _cluster_plot(schedule: dict):
    def draw(ax):
        phases = [r["phase"] + 1 for r in schedule["table"]]
        bottom = [0] * len(phases)
        for k in sorted(schedule["table"][0]["per_cluster"], key=int):
            values = [r["per_cluster"][k] for r in schedule["table"]]
            ax.bar(phases, values, bottom=bottom, label=f"cluster {k}")
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xlabel(f"curriculum phase (one {schedule.get('phase_unit', 'epoch')} each)")
        ax.set_ylabel("steps moved to the output")
        ax.legend(fontsize=7)
        ax.set_title("Steps each phase moves to the output, by question cluster")
        ax.set_xticks(phases)

    return draw


def _phase_plot(schedule: dict, steps_per_rationale: dict[str, int]):
    """Per curriculum phase: rationale steps given to the student in its input, and steps it writes."""

    def draw(ax):
        phases = range(schedule["phases"])
        given = [sum(c[t] for c in schedule["input_steps"].values()) for t in phases]
        total = sum(steps_per_rationale.get(key, 0) for key in schedule["input_steps"])
        written = [total - g for g in given]
        labels = [str(t + 1) for t in phases]
        ax.bar(labels, written, color="tab:red", label="steps the student writes (output)")
        ax.bar(labels, given, bottom=written, color="tab:gray", alpha=0.5, label="steps given in its input")
        ax.set_xlabel(f"curriculum phase (one {schedule.get('phase_unit', 'epoch')} each)")
        ax.set_ylabel("rationale steps, all rationales")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_title("What each phase asks of the student (last steps first)")

    return draw


def _training_plot(curves: list[tuple[str, dict]]):
    """Training loss of each run, one line per arm and seed, and dev accuracy when there is one run."""

    def draw(ax):
        for label, summary in curves:
            losses = summary.get("loss_history", [])
            ax.plot([h["step"] for h in losses], [h["loss"] for h in losses], label=f"{label} train loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (nats/token)")
        ax.legend(fontsize=7)
        dev = curves[0][1].get("dev_history", []) if len(curves) == 1 else []
        if dev:
            twin = ax.twinx()
            twin.plot(
                [d["step"] for d in dev], [d["dev_accuracy"] for d in dev], "o-", color="tab:red", label="dev accuracy"
            )
            twin.set_ylabel("dev accuracy (%)")
        ax.set_title("Training")

    return draw


def _results_plot(rows: list[dict]):
    """Accuracy and held-out rationale loss of each arm, side by side, with standard errors."""

    def draw(accuracy_ax, loss_ax):
        names = [r["arm"] for r in rows]
        colours = [f"C{i}" for i in range(len(rows))]
        bars = accuracy_ax.bar(names, [r["accuracy"] for r in rows], color=colours)
        accuracy_ax.bar_label(bars, labels=[f"{r['accuracy']:.1f}%" for r in rows])
        accuracy_ax.set_ylim(0, max(10.0, 1.25 * max(r["accuracy"] for r in rows)))
        accuracy_ax.set_ylabel("accuracy (%)")
        accuracy_ax.set_title("Final-answer accuracy")
        measured = [r for r in rows if r["loss"] is not None]
        bars = loss_ax.bar(
            [r["arm"] for r in measured],
            [r["loss"] for r in measured],
            yerr=[r["loss_se"] or 0 for r in measured],
            capsize=4,
            color=[c for c, r in zip(colours, rows) if r["loss"] is not None],
        )
        loss_ax.bar_label(bars, labels=[f"{r['loss']:.3f}" for r in measured], label_type="center", color="white")
        loss_ax.set_ylabel("nats per token (lower is better)")
        loss_ax.set_title("Held-out rationale loss")
        if measured:
            low = min(r["loss"] - (r["loss_se"] or 0) for r in measured)
            loss_ax.set_ylim(bottom=max(0.0, low - 0.25 * abs(low)))

    return draw


class Report:
    """Sections in HTML and Markdown, and the figures they embed."""

    def __init__(self):
        self.html: list[str] = []
        self.markdown: list[str] = []
        self.figures: list[tuple[str, bytes]] = []

    def section(self, title: str, body_html: str, body_md: str) -> None:
        self.html.append(f"<h2>{html.escape(title)}</h2>{body_html}")
        self.markdown.append(f"## {title}\n\n{body_md}\n")

    def figure(self, name: str, draw, panels: int = 1) -> tuple[str, str]:
        png = _figure(draw, panels)
        self.figures.append((name, png))
        return (
            f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">',
            f"![{name}](report_files/{name}.png)",
        )


def write_report(run_dir: str | Path) -> Path:
    """report.html (self-contained) and report.md (+ report_files/) for a run folder."""
    paths = RunPaths(run_dir).require_run()
    for stage in ("train_token_weighting", "cluster", "train"):
        require_fresh(paths.root, stage)
    config = next(
        (
            yaml.safe_load(p.read_text())
            for p in [paths.config_snapshot(s) for s in ("train", "evaluate", "generate")]
            if p.is_file()
        ),
        {},
    )
    split = (config.get("eval") or {}).get("split", "test")
    report = Report()
    arms = _arms(paths)
    _accuracy_section(report, paths, arms, config=config, split=split)
    _data_section(report, paths)
    _weights_sections(report, paths)
    _schedule_section(report, paths)
    _training_section(report, paths, arms)
    _predictions_section(report, paths, split)
    report.section(
        "Configuration",
        f"<pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>",
        f"```yaml\n{yaml.safe_dump(config, sort_keys=False)}```",
    )
    return _write_pages(report, paths, f"KPOD run report: {config.get('dataset', '?')}, {_student_name(config)}")


def _arms(paths: RunPaths) -> list[tuple[str, list[Path]]]:
    """The arms of the comparison this run belongs to (kpod compare), with their run folders; or this run alone."""
    link = _json(paths.comparison)
    if not (link and link.get("arms")):
        return [("this run", [paths.root])]
    return [(arm["arm"], [Path(r) for r in arm["runs"]]) for arm in link["arms"]]


def _result_rows(arms: list[tuple[str, list[Path]]], split: str) -> list[dict]:
    rows = []
    for name, runs in arms:
        found = [m for m in (_json(RunPaths(r).eval_dir(split) / "metrics.json") for r in runs) if m]
        if not found:
            continue
        losses = [m["rationale_loss"]["mean"] for m in found if (m.get("rationale_loss") or {}).get("mean") is not None]
        loss = statistics.mean(losses) if len(losses) == len(found) else None
        if loss is None:
            loss_se = None
        elif len(losses) == 1:
            loss_se = found[0]["rationale_loss"].get("se")
        else:
            loss_se = statistics.stdev(losses) / len(losses) ** 0.5
        rows.append(
            {
                "arm": name,
                "accuracy": statistics.mean(m["accuracy"] for m in found),
                "loss": loss,
                "loss_se": loss_se,
            }
        )
    return rows


def _student_name(config: dict) -> str:
    return (config.get("student") or {}).get("model", "?")


def _accuracy_section(report: Report, paths: RunPaths, arms: list, config: dict, split: str) -> None:
    dataset, student = config.get("dataset", "?"), _student_name(config)
    metrics = _json(paths.eval_dir(split) / "metrics.json")
    paper = paper_figure(student, dataset) if dataset in ("gsm8k", "asdiv", "svamp", "commonsenseqa") else None
    paper_text = f"{paper[1]:.2f}% (paper, KPOD, {paper[0]})" if paper else "no paper figure for this student"
    if metrics:
        acc = (
            f"{metrics['accuracy']:.2f}% ({metrics['correct']}/{metrics['total']}) on {dataset}/{split}, "
            f"model {metrics.get('model', '?')}"
        )
        loss = metrics.get("rationale_loss") or {}
        loss_text = (
            f"Held-out rationale loss {loss['mean']:.3f} ± {loss['se'] or 0:.3f} nats/token on {loss['questions']} "
            f"reference rationales ({loss['source']}): the student's loss on rationales it never trained on, lower is better."
            if loss.get("mean") is not None
            else ""
        )
        rows = _result_rows(arms, split)
        h, m = report.figure("results", _results_plot(rows), panels=2) if rows else ("", "")
        m += "\n\n| arm | accuracy (%) | held-out rationale loss |\n|---|---|---|\n" + "\n".join(
            f"| {r['arm']} | {r['accuracy']:.2f} | "
            + ("n/a" if r["loss"] is None else f"{r['loss']:.3f} ± {r['loss_se'] or 0:.3f}")
            + " |"
            for r in rows
        )
        report.section(
            "Accuracy",
            f"<p class=big>{acc}</p><p>{html.escape(loss_text)}</p>{h}<p>Paper Table 1: {paper_text}</p>",
            f"**{acc}**; {loss_text}\n\n{m}\n\nPaper Table 1: {paper_text}",
        )
    else:
        report.section("Accuracy", "<p>not evaluated yet (kpod evaluate)</p>", "not evaluated yet")


def _data_section(report: Report, paths: RunPaths) -> None:
    teacher = _json(paths.rationales_summary("train"))
    if not teacher:
        return
    names = (
        "teacher",
        "questions",
        "rationales",
        "correct",
        "teacher_accuracy",
        "requests_sent",
        "retries",
        "cost_usd",
    )
    items = {k: teacher.get(k) for k in names if k in teacher}
    items["incorrect (left out of training unless train.include_incorrect)"] = (
        teacher["rationales"] - teacher["correct"]
    )
    rows = "".join(
        f"<tr><td>{k}</td><td>{v if not isinstance(v, float) else f'{v:.2f}'}</td></tr>" for k, v in items.items()
    )
    report.section("Data", f"<table>{rows}</table>", "\n".join(f"- {k}: {v}" for k, v in items.items()))


def _weights_sections(report: Report, paths: RunPaths) -> None:
    """Token weights, the comparison this run belongs to, and the faithfulness of its weights."""
    if paths.weights.is_file():
        examples = weight_examples(paths.root, 4)
        blocks = "".join(f"<h4>{html.escape(r['id'])}</h4>{html_block(r['rationale'], o, w)}" for r, o, w in examples)
        md = "\n\n".join(
            f"`{r['id']}`: " + " ".join(f"{r['rationale'][a:b]}({x:.2f})" for (a, b), x in zip(o, w))
            for r, o, w in examples
        )
        report.section("Token weights (darker red = higher w inside the rationale; hover for w)", blocks, md)
    comparison = _json(paths.comparison)
    if comparison and comparison.get("html"):
        link = comparison["html"]
        report.section(
            "Comparison",
            f"<p>This run is arm <b>{html.escape(comparison['arm'])}</b> of "
            f'<a href="file://{html.escape(link)}">{html.escape(link)}</a> (kpod compare).</p>',
            f"This run is arm {comparison['arm']} of {link} (kpod compare).",
        )
    quality = _json(paths.weights_quality)
    if quality:
        from kpod.weighting.faithfulness import format_quality

        text = format_quality(quality)
        report.section(
            "Are the token weights keypoints? (weights/quality.json)", f"<pre>{html.escape(text)}</pre>", text
        )
    faithfulness = _json(paths.faithfulness)
    if faithfulness:
        from kpod.weighting.faithfulness import format_faithfulness

        text = format_faithfulness(faithfulness)
        report.section("Faithfulness of the token weights (kpod faithfulness)", f"<pre>{html.escape(text)}</pre>", text)


def _schedule_section(report: Report, paths: RunPaths) -> None:
    if not paths.schedule.is_file():
        return
    schedule = asdict(read_schedule(paths.schedule))
    if not schedule["table"]:
        report.section("Progressive schedule", f"<p>{paths.schedule} has no phases</p>", "the schedule has no phases")
        return
    steps = (
        {key: len(d) for key, d in read_difficulties(paths.difficulties).items()}
        if paths.difficulties.is_file()
        else {}
    )
    h0, m0 = report.figure("phases", _phase_plot(schedule, steps)) if steps else ("", "")
    h1, m1 = report.figure("budget", _budget_plot(schedule))
    h2, m2 = report.figure("clusters", _cluster_plot(schedule))
    table_file = paths.schedule_table
    table = table_file.read_text() if table_file.is_file() else ""
    report.section(
        "Progressive schedule",
        f"{h0}{h1}{h2}<pre>{html.escape(table)}</pre>",
        f"{m0}\n\n{m1}\n\n{m2}\n\n```\n{table}```",
    )


def _training_section(report: Report, paths: RunPaths, arms: list) -> None:
    summary = _json(paths.train_summary)
    if not (summary and summary.get("loss_history")):
        return
    curves = [
        (name if len(runs) == 1 else f"{name} {run.name}", _json(RunPaths(run).train_summary))
        for name, runs in arms
        for run in runs
    ]
    curves = [(label, s) for label, s in curves if s and s.get("loss_history")] or [("this run", summary)]
    h, m = report.figure("training", _training_plot(curves))
    facts = (
        f"{summary['method']}, {summary['examples']} examples, {summary['epochs']} epochs, {summary['seconds']:.0f} s."
    )
    if any(s.get("method") == "kpod" for _, s in curves) and len(curves) > 1:
        facts += (
            " KPOD's loss is token-weighted and, until the last phase, only on the steps each phase asks the"
            " student to write, so its curve is not on the same scale as Std-CoT's; the held-out rationale loss"
            " under Accuracy compares them."
        )
    report.section("Training", f"<p>{html.escape(facts)}</p>{h}", f"{facts}\n\n{m}")


def _predictions_section(report: Report, paths: RunPaths, split: str) -> None:
    predictions = _jsonl(paths.eval_dir(split) / "predictions.jsonl")
    if not predictions:
        return
    ordered = sorted(predictions, key=lambda p: p["correct"])
    rows = "".join(
        f"<tr class={'ok' if p['correct'] else 'bad'}><td>{'✔' if p['correct'] else '✘'}</td><td>{html.escape(p['question'])}</td>"
        f"<td>{html.escape(str(p['gold']))}</td><td>{html.escape(str(p['prediction']))}</td>"
        f"<td class=out>{html.escape(p['output'])}</td></tr>"
        for p in ordered
    )
    wrong = sum(not p["correct"] for p in predictions)
    report.section(
        f"Predictions ({wrong} wrong first, then {len(predictions) - wrong} right)",
        "<label><input type=checkbox onclick=\"document.body.classList.toggle('wrong-only')\"> wrong only</label>"
        f"<table class=pred><tr><th></th><th>question</th><th>gold</th><th>predicted</th><th>output</th></tr>{rows}</table>",
        "| ok | gold | predicted | question |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {'yes' if p['correct'] else 'no'} | {p['gold']} | {p['prediction']} | {p['question'][:80].replace('|', '/')} |"
            for p in ordered[:100]
        ),
    )


def _write_pages(report: Report, paths: RunPaths, title: str) -> Path:
    style = HTML_STYLE + (
        " table{border-collapse:collapse;font-size:90%} td,th{border:1px solid #ccc;padding:3px 6px;"
        "vertical-align:top} .bad td:first-child{color:#c00} .ok td:first-child{color:#080}"
        " .out{white-space:pre-wrap;max-width:30em} .big{font-size:150%} img{max-width:100%}"
        " body.wrong-only tr.ok{display:none}"
    )
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(str(paths.root))}</p>{''.join(report.html)}</body></html>"
    )
    out = paths.report_html
    atomic_write_text(out, page)
    files = paths.report_files
    files.mkdir(exist_ok=True)
    for name, png in report.figures:
        (files / f"{name}.png").write_bytes(png)
    atomic_write_text(paths.report_md, f"# {title}\n\n" + "\n".join(report.markdown))
    return out
