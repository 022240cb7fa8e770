"""The third probe's cases (issue 38): inputs that used to be taken silently the wrong way, or answered
with a vague error. Each gets a refusal that names the file or key and the fix, or the right behaviour."""

import json
import logging
import shutil

import datasets
import pytest
from fake_openai import FakeOpenAI

from kpod import pipeline
from kpod.cli import main
from kpod.config import ConfigError, load_config
from kpod.evaluation.compare import compare_runs, load_run
from kpod.export import export_student, export_weights
from kpod.files import DataError
from kpod.teacher.openai_teacher import TeacherError


def _teacher_cfg(tmp_path, url, n=4, **extra):
    overrides = {
        "dataset": "gsm8k",
        "output_dir": str(tmp_path / "run"),
        "data.max_train_questions": n,
        "teacher.kind": "openai",
        "teacher.base_url": url,
        "teacher.model": "fake-teacher",
        "teacher.backoff_base": 0.01,
        "teacher.backoff_max": 0.02,
    }
    return load_config(overrides={**overrides, **extra})


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_an_empty_config_file_is_refused_before_any_request(text, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    (tmp_path / "empty.yaml").write_text(text)
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        code = main(["generate", "--config", str(tmp_path / "empty.yaml"), "--output-dir", str(tmp_path / "run")])
    assert code == 2 and not server.attempts
    assert "empty.yaml: the config file is empty" in capsys.readouterr().err


def test_several_samples_at_temperature_zero_are_refused():
    with pytest.raises(ConfigError, match="samples_per_question=3 at teacher.temperature=0 .*temperature above 0"):
        load_config(overrides=["teacher.samples_per_question=3"])
    load_config(overrides=["teacher.samples_per_question=3", "teacher.temperature=0.7"])
    load_config(overrides=["teacher.samples_per_question=3", "teacher.kind=reference"])  # not asked: nothing to pay


def test_asdiv_formulas_are_not_taken_as_worked_solutions(tmp_path):
    cfg = load_config(
        overrides=["dataset=asdiv", "teacher.kind=reference", "data.max_train_questions=3", f"output_dir={tmp_path}/r"]
    )
    with pytest.raises(DataError, match="no worked solution.*teacher.kind=openai or file"):
        pipeline.generate(cfg)
    assert not (tmp_path / "r/rationales/train.jsonl").exists()


def test_report_refuses_a_folder_that_is_not_a_run(finished_tiny_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "not a kpod run folder (no stages.json)" in capsys.readouterr().err
    parent = tmp_path / "runs"
    shutil.copytree(finished_tiny_run[0], parent / "a")
    assert main(["report", str(parent)]) == 2
    assert "it holds the runs a: pass one" in capsys.readouterr().err
    assert sorted(p.name for p in empty.iterdir()) == [] and sorted(p.name for p in parent.iterdir()) == ["a"]


def test_trl_rows_leave_out_incorrect_rationales_and_refuse_seq2seq(finished_tiny_run, tiny_llama, tmp_path):
    from kpod.integrations.trl import weighted_sft_dataset
    from kpod.models import load_tokenizer

    export_weights(finished_tiny_run[0], tmp_path / "w.parquet")
    rows = datasets.Dataset.from_parquet(str(tmp_path / "w.parquet")).to_list()
    assert all(r["correct"] is True and r["seq2seq"] is False for r in rows)
    rows[0]["correct"] = False  # as a teacher's wrong rationale is exported
    tokenizer = load_tokenizer(str(tiny_llama))
    assert len(weighted_sft_dataset(rows, tokenizer, max_length=512)) == len(rows) - 1
    assert len(weighted_sft_dataset(rows, tokenizer, max_length=512, include_incorrect=True)) == len(rows)
    with pytest.raises(ValueError, match="seq2seq student .*`kpod train`"):
        weighted_sft_dataset([{**r, "seq2seq": True} for r in rows], tokenizer)


def test_kpod_sft_trainer_refuses_a_seq2seq_model(tiny_t5, tmp_path):
    from trl import SFTConfig

    from kpod.integrations.trl import KPODSFTTrainer
    from kpod.models import load_model, load_tokenizer

    rows = datasets.Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2], "token_weights": [1.0, 1.0]}])
    args = SFTConfig(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(ValueError, match="seq2seq .*KPODSFTTrainer trains causal LMs"):
        KPODSFTTrainer(
            model=load_model(str(tiny_t5)), args=args, train_dataset=rows, processing_class=load_tokenizer(str(tiny_t5))
        )


def test_another_model_is_not_evaluated_into_a_run_with_its_own_student(finished_tiny_run, tiny_llama, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run[0], run)
    before = (run / "eval/test/metrics.json").read_bytes()
    cfg = load_config(overrides=finished_tiny_run[1] + [f"output_dir={run}"])
    with pytest.raises(DataError, match=r"holds its own trained student .*kpod evaluate --model_path .* --output-dir"):
        pipeline.evaluate(cfg, model_path=str(tiny_llama))
    assert (run / "eval/test/metrics.json").read_bytes() == before
    pipeline.evaluate(cfg, model_path=str(run / "student"))  # its own student, named: as the original README
    assert f"model {run / 'student'}" in _report(run)


def _report(run):
    from kpod.report import write_report

    write_report(run)
    return (run / "report.md").read_text()


def test_an_adapter_export_evaluates_as_the_run_did(finished_tiny_run, tmp_path):
    run, overrides = finished_tiny_run
    out = tmp_path / "adapter"
    export_student(run, out)
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").is_file()
    cfg = load_config(overrides=overrides + [f"output_dir={tmp_path / 'other'}"])
    metrics = pipeline.evaluate(cfg, model_path=str(out))
    own = json.loads((run / "eval/test/metrics.json").read_text())
    theirs = [
        json.loads(x)["output"] for x in (tmp_path / "other/eval/test/predictions.jsonl").read_text().splitlines()
    ]
    ours = [json.loads(x)["output"] for x in (run / "eval/test/predictions.jsonl").read_text().splitlines()]
    assert theirs == ours and metrics["accuracy"] == own["accuracy"]


@pytest.mark.parametrize("fault", ["no_choices", "null_content"])
def test_an_answer_without_text_is_paid_once_and_named(fault, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    first = []

    def one_refusal(prompt, attempt):
        first.append(prompt) if not first else None
        return fault if prompt == first[0] else "ok"

    with FakeOpenAI(fault=one_refusal) as server:
        cfg = _teacher_cfg(tmp_path, server.url, n=4)
        summary = pipeline.generate(cfg)
        assert sum(server.attempts.values()) == 4  # the refused one was not asked again
        reason = "no choices" if fault == "no_choices" else "content null (finish_reason content_filter)"
        assert summary["answered_without_text"] == {reason: 1} and summary["errors"] == {}
        assert "without text" in caplog.text
        rows = (tmp_path / "run/rationales/train.jsonl").read_text().splitlines()
        assert len(rows) == 3
        pipeline.generate(cfg)  # again: nothing sent, the refusal is cached
        assert sum(server.attempts.values()) == 4


def test_compare_tells_different_students_and_datasets_from_duplicates(tmp_path):
    def run(name, dataset, student):
        folder = tmp_path / name
        (folder / "eval/test").mkdir(parents=True)
        (folder / "eval/test/predictions.jsonl").write_text(
            "".join(json.dumps({"id": f"q{i}", "correct": i % 2 == 0}) + "\n" for i in range(4 + len(name)))
        )
        (folder / "configs").mkdir()
        (folder / "configs/train.yaml").write_text(
            f"method: kpod\nseed: 42\ndataset: {dataset}\nstudent: {{model: {student}}}\ntrain: {{}}\n"
            "difficulty: {}\nschedule: {}\n"
        )
        return load_run(folder, "test")

    llama, t5 = run("llama", "gsm8k", "tiny-llama"), run("t5xx", "gsm8k", "tiny-t5")
    with pytest.raises(DataError, match="different students \\(tiny-llama vs tiny-t5\\).*--group tiny-llama="):
        compare_runs([llama, t5])
    csqa = run("csqa", "commonsenseqa", "tiny-llama")
    with pytest.raises(DataError, match="different datasets \\(gsm8k vs commonsenseqa\\)"):
        compare_runs([llama, csqa])


def test_a_non_utf8_config_names_the_file_and_line(tmp_path):
    (tmp_path / "c.yaml").write_bytes(b"train:\n  epochs: 2\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 3: not UTF-8 \(byte 0xe9"):
        load_config(tmp_path / "c.yaml")


def test_an_empty_student_model_is_refused_at_load():
    with pytest.raises(ConfigError, match="student.model: .*empty: name a hub id"):
        load_config(overrides=["student.model="])


def test_a_bad_set_value_is_not_blamed_on_the_file(tmp_path):
    (tmp_path / "ok.yaml").write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "ok.yaml", ["train.batch_size=-1"])
    assert "train.batch_size: " in str(caught.value) and "[--set]" in str(caught.value)
    (tmp_path / "bad.yaml").write_text("train:\n  epochs: -2\n")
    with pytest.raises(ConfigError, match=r"train.epochs: .*\[.*bad.yaml\]"):
        load_config(tmp_path / "bad.yaml", ["train.batch_size=2"])


def test_a_paid_run_above_its_budget_sends_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    caplog.set_level(logging.INFO, logger="kpod.teacher.openai_teacher")
    priced = {"teacher.price_per_1k_prompt": 0.0, "teacher.price_per_1k_completion": 1.0}
    with FakeOpenAI() as server:
        with pytest.raises(
            TeacherError, match=r"may cost up to \$8\.\d\d .*budget_usd=\$5; nothing was sent.*budget_usd=9"
        ):
            pipeline.generate(_teacher_cfg(tmp_path, server.url, n=16, **priced))
        assert not server.attempts
        pipeline.generate(_teacher_cfg(tmp_path, server.url, n=16, **priced, **{"teacher.budget_usd": 9}))
        assert sum(server.attempts.values()) == 16
        assert "16 requests to send (0 already answered in the cache)" in caplog.text
        # cached answers cost nothing: more questions, only the new ones count against the budget
        pipeline.generate(_teacher_cfg(tmp_path, server.url, n=20, **priced))
        assert sum(server.attempts.values()) == 20
        # a free endpoint (price 0) is never blocked, whatever its size
        free = {"teacher.price_per_1k_prompt": 0, "teacher.price_per_1k_completion": 0, "teacher.budget_usd": 0}
        pipeline.generate(_teacher_cfg(tmp_path, server.url, n=24, **free))
        assert sum(server.attempts.values()) == 24
