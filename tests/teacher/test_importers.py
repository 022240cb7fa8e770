"""Imported rationales: every row is kept, numbered when the file does not number it, and the summary
counts what was read, kept and dropped; a malformed row is an error naming the file, line and field."""

import json

import pytest

from kpod import pipeline
from kpod.config import load_config
from kpod.data import load_dataset_splits
from kpod.files import DataError
from kpod.teacher.importers import import_rationales


@pytest.fixture(scope="module")
def questions(data_dir):
    return load_dataset_splits("gsm8k", data_dir).train[:3]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_several_rationales_per_question_are_all_kept(tmp_path, questions):
    q0, q1 = questions[0], questions[1]
    rows = [
        {"id": q0.id, "rationale": f"First try. The answer is {q0.answer}."},
        {"id": q0.id, "rationale": f"Second try. The answer is {q0.answer}."},
        {"question": q1.question, "rationale": ["One way. The answer is 1.", "Another way. The answer is 2."]},
        {"id": q0.id, "rationale": "Third try. The answer is 0."},
        {"id": "not-in-this-split", "rationale": "The answer is 3."},
    ]
    records, counts = import_rationales(_write(tmp_path / "r.jsonl", rows), questions)
    assert [(r["id"], r["sample"], r["rationale"].split(".")[0]) for r in records] == [
        (q0.id, 0, "First try"),
        (q0.id, 1, "Second try"),
        (q1.id, 0, "One way"),
        (q1.id, 1, "Another way"),
        (q0.id, 2, "Third try"),
    ]
    assert counts == {"read": 6, "kept": 5, "dropped": {"no question of this split": 1}}

    run = tmp_path / "run"
    cfg = load_config(
        overrides=[
            "dataset=gsm8k",
            "teacher.kind=file",
            f"teacher.import_path={tmp_path / 'r.jsonl'}",
            f"output_dir={run}",
        ]
    )
    summary = pipeline.generate(cfg)
    assert summary["rationales"] == 5 and summary["import"]["read"] == 6
    assert summary["import"]["dropped"] == {"no question of this split": 1}


def test_a_repeated_sample_number_is_refused_naming_the_question(tmp_path, questions):
    q0 = questions[0]
    rows = [{"id": q0.id, "sample": 0, "rationale": "A."}, {"id": q0.id, "sample": 0, "rationale": "B."}]
    with pytest.raises(DataError, match=f"question {q0.id} has two rationales numbered sample 0"):
        import_rationales(_write(tmp_path / "r.jsonl", rows), questions)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"rationale": 42}, r"r\.jsonl:2: field 'rationale' must be a string or a list of strings, got int"),
        ({"output": ["ok", None]}, r"r\.jsonl:2: field 'output' must be a string or a list of strings, got list"),
        ({"rationale": "x", "sample": "one"}, r"r\.jsonl:2: field 'sample' must be an integer"),
    ],
)
def test_a_malformed_row_names_the_file_line_and_field(tmp_path, questions, row, message):
    rows = [{"id": questions[0].id, "rationale": "Fine."}, {"id": questions[1].id, **row}]
    with pytest.raises(DataError, match=message):
        import_rationales(_write(tmp_path / "r.jsonl", rows), questions)
