"""eval.backend=server: the same prompts, greedy, to an OpenAI-compatible server; the same files and
metrics as the local backend; retries, a cache that resumes, clear errors."""

import json
import os
import shutil
import threading

import pytest
from fake_openai import FakeOpenAI

from kpod import pipeline
from kpod.config import ConfigError, load_config
from kpod.decoding import greedy_continuations
from kpod.endpoint import EndpointError
from kpod.models import load_student
from kpod.rationale import format_prompt


def _predictions(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_server_backend_scores_exactly_what_the_local_backend_scores(tmp_path):
    """SmolLM2 answers 5 GSM8K questions locally and behind a server that runs the same model one prompt
    at a time (batch_size 1 locally too, so no padding differs): same cleaned outputs, same metrics."""
    settings = {
        "dataset": "gsm8k",
        "output_dir": str(tmp_path),
        "data.max_eval_questions": 5,
        "eval.max_new_tokens": 96,
        "eval.batch_size": 1,
        "student.model": "smollm2",
    }
    local = pipeline.evaluate(load_config(overrides=settings))
    model, tokenizer = load_student("smollm2")
    lock, requests = threading.Lock(), []

    def complete(prompt, max_tokens):
        with lock:
            requests.append((prompt, max_tokens))
            return greedy_continuations(
                model, tokenizer, [prompt], max_tokens, progress=False, stop_when_complete=False
            )[0]

    with FakeOpenAI(complete=complete) as server:
        served = settings | {"eval.backend": "server", "eval.server_url": server.url, "eval.server_model": "student"}
        remote = pipeline.evaluate(load_config(overrides=served), tag="server")
        again = pipeline.evaluate(load_config(overrides=served), tag="server")
    questions = pipeline.load_splits(load_config(overrides=settings), "test").split("test")
    assert sorted(requests) == sorted((format_prompt(q.question), 96) for q in questions)
    for key in ("accuracy", "correct", "total", "answer_found", "answer_sentence"):
        assert remote[key] == local[key], key
    assert local["total"] == 5 and local["answer_found"] >= 3
    by_local, by_server = _predictions(tmp_path / "eval/test"), _predictions(tmp_path / "eval/test-server")
    for a, b in zip(by_local, by_server, strict=True):
        assert (a["id"], a["output"], a["prediction"], a["correct"]) == (
            b["id"],
            b["output"],
            b["prediction"],
            b["correct"],
        )
    assert remote["server"]["requests_sent"] == 5
    assert again["server"]["requests_sent"] == 0 and again["server"]["answered_from_cache"] == 5


def _server_cfg(tmp_path, url, student, **extra):
    return load_config(
        overrides={
            "dataset": "svamp",
            "output_dir": str(tmp_path / "run"),
            "data.max_eval_questions": 8,
            "student.model": str(student),
            "eval.backend": "server",
            "eval.server_url": url,
            "eval.server_model": "kpod-student",
            "eval.server_timeout": 3.0,
            "eval.server_max_retries": 6,
        }
        | extra
    )


def test_faults_are_retried_answers_cached_and_a_new_student_asked_again(tmp_path, tiny_llama, monkeypatch):
    faults = ["500", "drop", "malformed", "429", "slow", "ok", "ok", "ok"]
    order: dict[str, int] = {}

    def fault(prompt, attempt):
        index = order.setdefault(prompt, len(order))
        return faults[index % len(faults)] if attempt == 1 else "ok"

    monkeypatch.setenv("KPOD_EVAL_API_KEY", "secret-for-the-server")
    answer = "3 + 4 = 7. Therefore, the answer is 7.\nQ: and the next question"
    student = tmp_path / "student"  # a copy: its files are touched below, and the session's model is shared
    shutil.copytree(tiny_llama, student)
    with FakeOpenAI(fault=fault, slow_seconds=6.0, complete=lambda prompt, max_tokens: answer) as server:
        cfg = _server_cfg(tmp_path, server.url, student)
        metrics = pipeline.evaluate(cfg)
        assert metrics["total"] == 8 and metrics["server"]["retries"] >= 5
        assert set(server.successes.values()) == {1}
        assert all(h == "Bearer secret-for-the-server" for h in server.auth_headers)
        predictions = _predictions(tmp_path / "run/eval/test")
        assert {p["prediction"] for p in predictions} == {"7"}
        assert {p["output"] for p in predictions} == {"3 + 4 = 7. Therefore, the answer is 7."}
        # a rerun asks nothing; a student whose files changed is asked again
        assert pipeline.evaluate(cfg)["server"]["requests_sent"] == 0
        weights = next(student.glob("*.safetensors"))
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000_000))
        rerun = pipeline.evaluate(cfg)["server"]
        assert rerun["answered_from_cache"] == 0 and rerun["requests_sent"] == 8 + rerun["retries"]


def test_a_refusing_server_and_a_missing_url_are_clear_errors(tmp_path, tiny_llama, monkeypatch):
    with FakeOpenAI(status_on_all=404) as server:
        with pytest.raises(EndpointError, match=r"evaluation server: .* refused the request \(404\)"):
            pipeline.evaluate(_server_cfg(tmp_path, server.url, tiny_llama))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match="runs in one process"):
            pipeline.evaluate(_server_cfg(tmp_path, server.url, tiny_llama))
    with pytest.raises(ConfigError, match="eval.backend=server needs eval.server_url"):
        load_config(overrides={"eval.backend": "server"})
