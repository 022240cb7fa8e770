"""bench/ and studies/ are code: every script imports against today's kpod, uses only the documented
Python API (docs/api.md), and those with a smoke mode run it."""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH, STUDIES = ROOT / "bench", ROOT / "studies"
SCRIPTS = sorted(p for folder in (BENCH, STUDIES) for p in folder.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_script_imports(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))  # scripts import their folder's modules, as when run
    spec = importlib.util.spec_from_file_location(f"{script.parent.name}_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top-level imports and definitions; main() only runs as a script
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"


def documented_api() -> dict[str, set[str]]:
    """docs/api.md's table: module -> the names it documents."""
    api = {}
    for line in (ROOT / "docs/api.md").read_text().splitlines():
        cells = line.split("|")
        if len(cells) > 3 and cells[1].strip().startswith("`kpod"):
            api[cells[1].strip(" `")] = set(re.findall(r"`(\w+)`", cells[2]))
    return api


def test_bench_and_studies_use_only_the_documented_api():
    api = documented_api()
    modules = {m.split(".")[-1]: m for m in api}
    for script in sorted(BENCH.glob("*.py")) + sorted(STUDIES.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kpod"):
                continue
            for alias in node.names:
                if node.module == "kpod":  # from kpod import pipeline: a documented module, by its attributes
                    module = modules.get(alias.name)
                    assert module == f"kpod.{alias.name}", f"{script.name}: kpod.{alias.name} is not documented"
                    used = set(re.findall(rf"\b{alias.name}\.(\w+)", script.read_text()))
                    assert used <= api[module], f"{script.name}: {module}.{sorted(used - api[module])} undocumented"
                else:
                    assert alias.name in api.get(node.module, set()), (
                        f"{script.name}: {node.module}.{alias.name} is not in docs/api.md"
                    )


def smoke(script: str, data_dir: Path, *extra: str) -> str:
    env = {**os.environ, "KPOD_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / script), "--smoke", *extra], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_gpu_pipeline_runs_every_stage_of_both_methods_on_the_cpu(data_dir, tmp_path):
    out = smoke("bench/gpu_pipeline.py", data_dir, "--device", "cpu", "--json", str(tmp_path / "r.json"))
    stages = {tuple(line.split()[:2]) for line in out.splitlines() if line.startswith(("std-cot ", "kpod "))}
    assert {("std-cot", s) for s in ("generate", "train", "evaluate")} <= stages
    assert {("kpod", s) for s in ("train_token_weighting", "calculate_difficulties", "cluster", "train")} <= stages
    assert "KPOD epoch / Std-CoT epoch" in out and "bare step tokens/s" in out
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    train = next(r for r in result["results"]["std-cot"] if r["stage"] == "train")
    assert train["tokens"] > 0 and result["bare_tokens_per_s"] > 0


def test_stopping_overhead_smoke(data_dir):
    assert "ratio" in smoke("bench/stopping_overhead.py", data_dir).lower()


def test_step_overhead_smoke(data_dir):
    assert "train step / bare step" in smoke("bench/step_overhead.py", data_dir)


def test_faithfulness_unseen_smoke(data_dir, finished_tiny_run, tmp_path):
    """A trained module weighs rationales its run never saw, and the deletion test runs on them."""
    import json

    run, _ = finished_tiny_run
    out = smoke("studies/faithfulness_unseen.py", data_dir, str(run), "--json", str(tmp_path / "unseen.json"))
    assert "unseen rationales" in out and "top/heuristic" in out
    result = json.loads((tmp_path / "unseen.json").read_text())
    (only,) = result.values()
    seen = {json.loads(line)["key"] for line in (run / "weights/weights.jsonl").read_text().splitlines()}
    assert only["rationales"] == 4 and not {r["key"] for r in only["per_rationale"]} & seen


def test_keypoint_stability_smoke(data_dir, tmp_path):
    out = smoke(
        "bench/keypoint_stability.py", data_dir, "--out", str(tmp_path / "ks"), "--json", str(tmp_path / "ks.json")
    )
    assert "seeds 0-1: Spearman of w" in out and "/ one Std-CoT epoch on 1000 rationales" in out
    results = json.loads((tmp_path / "ks.json").read_text())
    assert set(results["seeds"]) == {"0", "1"} and results["pairs"]["0-1"]["rationales"] == 6
    assert 0 <= results["pairs"]["0-1"]["jaccard_top"] <= 1 and results["cost"]["ratio"] > 0
