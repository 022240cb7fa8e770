"""The README's commands, at the CLI level, with tiny models: the original `main.py --mode` interface
for every stage, `kpod full_pipeline` skipping finished stages, the report, and clear errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kpod.cli import main, main_original

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "data.max_train_questions=8",
    "--set",
    "data.max_eval_questions=3",
    "--set",
    "train.epochs=3",
    "--set",
    "weighting.epochs=1",
    "--set",
    "eval.max_new_tokens=8",
    "--set",
    "train.eval_every=1",
    "--set",
    "train.eval_questions=2",
    "--set",
    "student.lora_r=4",
    "--set",
    "teacher.kind=reference",
    "--set",
    "student.max_target_tokens=256",
    "--quiet",
]


def test_original_interface_every_mode(tmp_path, tiny_t5, capsys):
    run = tmp_path / "run"
    common = ["--dataset", "gsm8k", "--model", str(tiny_t5), "--output-dir", str(run)] + SMALL
    for mode in ("generate", "train_token_weighting", "calculate_difficulties", "cluster", "train"):
        assert main_original(["--mode", mode] + common) == 0, mode
    assert main_original(["--mode", "evaluate", "--model_path", str(run / "student")] + common) == 0
    for path in [
        "rationales/train.jsonl",
        "weights/weights.jsonl",
        "difficulty/difficulties.jsonl",
        "clusters/clusters.json",
        "schedule/schedule.json",
        "student/kpod_student.json",
        "eval/test/metrics.json",
        "eval/test/predictions.jsonl",
    ]:
        assert (run / path).is_file(), path
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert metrics["total"] == 3 and 0 <= metrics["accuracy"] <= 100
    schedule = json.loads((run / "schedule/schedule.json").read_text())
    assert schedule["epochs"] == 3 and len(schedule["input_steps"]) == 8
    summary = json.loads((run / "train/summary.json").read_text())
    assert summary["method"] == "kpod" and len(summary["dev_history"]) == 3
    assert (run / "logs/train.log").is_file() and (run / "configs/train.yaml").is_file()
    # the report renders from this run
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Progressive schedule" in page and "data:image/png;base64" in page and "Predictions" in page
    assert (run / "report.md").is_file() and (run / "report_files/budget.png").is_file()
    assert main(["show_weights", str(run), "--n", "1", "--html", str(tmp_path / "w.html")]) == 0
    assert "w = " in (tmp_path / "w.html").read_text()


def test_full_pipeline_skips_finished_stages(tmp_path, tiny_llama, capsys):
    args = [
        "full_pipeline",
        "--dataset",
        "gsm8k",
        "--model",
        str(tiny_llama),
        "--output-dir",
        str(tmp_path / "run"),
    ] + SMALL
    assert main(args) == 0
    manifest = json.loads((tmp_path / "run/stages.json").read_text())
    assert {"generate", "train_token_weighting", "calculate_difficulties", "cluster", "train", "evaluate/test"} <= set(
        manifest
    )
    assert all(v == "skipped" for v in _last_result(main, args, capsys).values())
    # a changed setting reruns that stage and what depends on it
    changed = _last_result(main, args + ["--set", "schedule.beta=0"], capsys)
    assert changed["generate"] == "skipped" and changed["cluster"] != "skipped"
    # (training reruns only if the new schedule differs from the old one, byte for byte)
    changed = _last_result(main, args + ["--set", "schedule.beta=0", "--set", "train.learning_rate=0.001"], capsys)
    assert changed["cluster"] == "skipped" and changed["train"] != "skipped"
    assert changed["evaluate"] != "skipped", "a retrained student must be evaluated again"


def _last_result(entry, args, capsys):
    capsys.readouterr()
    assert entry(args) == 0
    out = "\n" + capsys.readouterr().out
    return json.loads(out[out.rindex("\n{\n") :])  # the CLI's result, after whatever the Trainer printed


def test_main_py_subprocess_and_errors(tmp_path, tiny_t5):
    base = [
        sys.executable,
        str(ROOT / "main.py"),
        "--mode",
        "train",
        "--dataset",
        "gsm8k",
        "--model",
        str(tiny_t5),
        "--output-dir",
        str(tmp_path / "empty"),
    ]
    out = subprocess.run(base, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "rationales file not found" in out.stderr
    out = subprocess.run(base + ["--set", "train.epochz=2"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "train.epochz" in out.stderr
    out = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--mode", "evaluate", "--dataset", "mnist"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "unknown dataset" in out.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kpod.cli",
            "generate",
            "--dataset",
            "svamp",
            "--set",
            "teacher.kind=openai",
            "--output-dir",
            str(tmp_path / "g"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in __import__("os").environ.items() if k != "OPENAI_API_KEY"},
    )
    assert out.returncode == 2 and "OPENAI_API_KEY" in out.stderr


def test_damaged_run_files_give_one_line_errors(tmp_path, capsys):
    """A corrupt or foreign-shaped file of the run folder: a message naming the file and the fix, no traceback."""
    run = tmp_path / "run"
    (run / "schedule").mkdir(parents=True)
    (run / "schedule/schedule.json").write_bytes(b"\xff\xfe not json")
    (run / "stages.json").write_text("{broken")
    args = ["--dataset", "gsm8k", "--output-dir", str(run), "--set", "teacher.kind=reference", "--quiet"]
    assert main(["full_pipeline"] + args) == 2
    err = capsys.readouterr().err
    assert "stages.json: damaged" in err and "delete it" in err and "Traceback" not in err
    (run / "stages.json").unlink()
    import pytest

    from kpod.artifacts import read_json
    from kpod.files import DataError

    with pytest.raises(DataError, match="schedule.json: damaged .*rerun `kpod cluster`"):
        read_json(run / "schedule/schedule.json", "delete it and rerun `kpod cluster`")
    (run / "schedule/schedule.json").write_text('{"something": 1}')
    with pytest.raises(DataError, match="not a file kpod wrote here"):
        read_json(run / "schedule/schedule.json", "rerun", ("input_steps",))
    # anything unexpected still reaches the user as one line, with the traceback on request
    (tmp_path / "afile").write_text("x")
    assert main(["report", str(tmp_path / "afile")]) in (1, 2)
    assert "Traceback" not in capsys.readouterr().err


def test_same_config_same_files(tmp_path, tiny_llama):
    """Seeds reproduce a run: two tiny full pipelines with one config write byte-identical token
    weights, schedules and students (LoRA adapters included)."""
    import hashlib

    def run(name):
        folder = tmp_path / name
        assert (
            main(
                ["full_pipeline", "--dataset", "gsm8k", "--model", str(tiny_llama), "--output-dir", str(folder)]
                + SMALL
                + ["--set", "train.eval_every=0"]
            )
            == 0
        )
        files = ["weights/weights.jsonl", "schedule/schedule.json", "difficulty/difficulties.jsonl"]
        files += sorted(
            str(f.relative_to(folder)) for f in (folder / "student").iterdir() if f.suffix in (".safetensors", ".json")
        )
        return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files}

    first, second = run("a"), run("b")
    assert any("safetensors" in f for f in first)
    assert first == second


BAD_INPUTS = {
    "missing model folder": (["evaluate", "--model", "./no-such-model"], "student.model: .*no such model folder"),
    "unknown hub model offline": (["evaluate", "--model", "nobody/no-such-model"], "not a model folder .*hub id"),
    "rate limit below one a minute": (
        ["generate", "--set", "teacher.requests_per_minute=0.5"],
        "teacher.requests_per_minute: .*greater than or equal to 1",
    ),
    "output folder is a file": (["generate", "--set", "teacher.kind=reference"], "output folder is a file"),
    "damaged teacher cache": (
        ["generate", "--set", "teacher.base_url=http://127.0.0.1:9", "--set", "data.max_train_questions=1"],
        "teacher_cache.sqlite: damaged teacher cache .*move it away",
    ),
    "damaged metrics": (["report"], "metrics.json: damaged .*delete it and rerun"),
    "damaged predictions": (["report"], r"predictions.jsonl:1: malformed JSON line"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_get_one_line_errors_naming_what_to_fix(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    if case == "output folder is a file":
        run.write_text("")
    if case == "damaged teacher cache":
        (run / "rationales").mkdir(parents=True)
        (run / "rationales/teacher_cache.sqlite").write_text("not a database")
    if case.startswith("damaged") and case != "damaged teacher cache":
        (run / "eval/test").mkdir(parents=True)
        (run / "stages.json").write_text("{}")
        (run / "eval/test/metrics.json").write_text("{" if case == "damaged metrics" else "{}")
        (run / "eval/test/predictions.jsonl").write_text("{oops\n")
    command, expected = BAD_INPUTS[case]
    args = command + ([str(run)] if command == ["report"] else ["--dataset", "gsm8k", "--output-dir", str(run)])
    assert main(args + ["--quiet"] if command != ["report"] else args) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert "Traceback" not in err and "--debug" not in err and len(err.strip().splitlines()) <= 2
