"""`kpod export`: a standalone model folder that plain transformers (or peft) loads and that predicts
what `kpod evaluate` predicted on the run; the token weights as a dataset."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from kpod import pipeline
from kpod.cli import main
from kpod.config import load_config
from kpod.data import Question
from kpod.decoding import evaluate_questions


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_llama):
    run = tmp_path_factory.mktemp("export") / "run"
    overrides = [
        "dataset=gsm8k",
        "teacher.kind=reference",
        f"student.model={tiny_llama}",
        f"output_dir={run}",
        "data.max_train_questions=8",
        "data.max_eval_questions=4",
        "train.epochs=2",
        "train.learning_rate=0.003",
        "weighting.epochs=1",
        "train.eval_every=0",
        "student.lora_r=4",
        "eval.max_new_tokens=12",
        "student.max_target_tokens=256",
    ]
    pipeline.full_pipeline(load_config(overrides=overrides))
    return run


def _predictions(run):
    return [json.loads(line) for line in (run / "eval/test/predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("merge", [True, False])
def test_exported_student_predicts_what_kpod_evaluate_predicted(trained_run, tmp_path, merge):
    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)] + (["--merge"] if merge else [])) == 0
    if merge:  # plain transformers, no peft, no kpod loading code
        model = AutoModelForCausalLM.from_pretrained(out)
        assert not (out / "adapter_config.json").exists() and not hasattr(model, "peft_config")
    else:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = _predictions(trained_run)
    questions = [Question(p["id"], p["question"], p["gold"], "math") for p in expected]
    _, predictions = evaluate_questions(model, tokenizer, questions, max_new_tokens=12, progress=False)
    assert [p["raw_output"] for p in predictions] == [p["raw_output"] for p in expected]
    card = (out / "README.md").read_text()
    metrics = json.loads((trained_run / "eval/test/metrics.json").read_text())
    assert f"{metrics['accuracy']:.2f}%" in card and "Let's think step by step" in card and "ICML" in card
    assert json.loads((out / "generation_config.json").read_text())["max_new_tokens"] == 12


def test_token_weights_export_as_a_dataset(trained_run, tmp_path):
    import datasets

    assert main(["export", str(trained_run), "--weights", str(tmp_path / "w.parquet")]) == 0
    rows = datasets.Dataset.from_parquet(str(tmp_path / "w.parquet")).to_list()
    stored = [json.loads(line) for line in (trained_run / "weights/weights.jsonl").read_text().splitlines()]
    assert len(rows) == len(stored) == 8
    by_key = {r["key"]: r for r in stored}
    for row in rows:
        assert row["weights"] == pytest.approx(by_key[row["key"]]["weights"])
        assert [row["rationale"][a:b] for a, b in row["offsets"]] == row["tokens"]
        assert row["phase0_target"].endswith(f"the answer is {row['answer']}.")
    schedule = json.loads((trained_run / "schedule/schedule.json").read_text())["input_steps"]
    assert [r["phase0_input_steps"] for r in rows] == [schedule[r["key"]][0] for r in rows]


def test_export_needs_a_trained_student(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a kpod run folder" in capsys.readouterr().err
    (tmp_path / "stages.json").write_text("{}")  # a run folder whose student is not trained yet
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "train the student first" in capsys.readouterr().err


def test_export_never_deletes_what_it_did_not_write(trained_run, tmp_path, capsys):
    """The run folder, a folder that holds it and a folder of other files are refused and left as they were;
    an earlier export is replaced, an empty folder filled."""
    models = tmp_path / "models"
    (models / "other-model").mkdir(parents=True)
    (models / "other-model" / "model.safetensors").write_text("someone else's weights")
    before = sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*"))
    for target, reason in [
        (trained_run, "run folder or holds it"),
        (trained_run.parent, "run folder or holds it"),
        (models, "holds other files"),
        (models / "other-model", "holds other files"),
    ]:
        assert main(["export", str(trained_run), "--out", str(target)]) == 2
        assert reason in capsys.readouterr().err
    assert main(["export", str(trained_run), "--weights", str(models)]) == 2
    assert sorted(str(p.relative_to(trained_run)) for p in trained_run.rglob("*")) == before
    assert (models / "other-model" / "model.safetensors").read_text() == "someone else's weights"

    out = models / "kpod-student"
    out.mkdir()  # an empty folder is filled
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    (out / "stale-file.txt").write_text("left by the earlier export")
    assert main(["export", str(trained_run), "--out", str(out), "--merge"]) == 0  # an earlier export is replaced
    assert not (out / "stale-file.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in models.iterdir()) == ["kpod-student", "other-model"]  # no staging left behind
    weights = tmp_path / "weights-dataset"
    assert main(["export", str(trained_run), "--weights", str(weights)]) == 0
    assert main(["export", str(trained_run), "--weights", str(weights)]) == 0
    import datasets

    assert len(datasets.load_from_disk(str(weights))) > 0
