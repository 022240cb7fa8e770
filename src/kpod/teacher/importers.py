"""Teachers that need no API: rationales imported from a file, or the dataset's own solutions."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from kpod.data.datasets import Question
from kpod.files import DataError, read_json, read_jsonl
from kpod.teacher.records import rationale_record

log = logging.getLogger(__name__)


def _key(text: str) -> str:
    return " ".join(text.replace("Answer Choices:", " ").split()).lower()


def reference_rationales(questions: list[Question]) -> list[dict]:
    """The dataset's worked solutions as rationales (GSM8K; ASDiv formulas are too terse to use)."""
    missing = [q.id for q in questions if not q.solution]
    if missing:
        raise DataError(
            f"{len(missing)} question(s) have no worked solution (e.g. {missing[0]}): the 'reference' "
            "teacher needs a dataset that ships one (gsm8k); use teacher.kind=openai or file instead"
        )
    return [rationale_record(q, f"{q.solution}\nTherefore, the answer is {q.answer}.", "reference") for q in questions]


def _completion_at_first_question(text: str) -> str:
    return text.split("\n\nQ:")[0].strip()


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "palm_dss"
    if path.suffix == ".jsonl":
        return "jsonl"
    head = path.read_text(encoding="utf-8")[:2000].lstrip()
    return "mcc_kd" if head.startswith("[") and '"instruction"' in head else "jsonl"


def _pairs_jsonl(path: Path) -> list[tuple[dict, str, int | None]]:
    """(row, rationale, sample) per rationale; sample None where the row does not number it."""
    rows = read_jsonl(path)
    out = []
    for number, row in enumerate(rows, 1):
        field = next((f for f in ("rationale", "output", "text") if f in row), None)
        if field is None or not ("id" in row or "question" in row):
            raise DataError(f"{path}:{number}: expected 'id' or 'question' and 'rationale' (or 'output'/'text')")
        text = row[field]
        texts = text if isinstance(text, list) else [text]
        if not all(isinstance(t, str) for t in texts):
            raise DataError(
                f"{path}:{number}: field '{field}' must be a string or a list of strings, got {type(text).__name__}"
            )
        sample = row.get("sample")
        if sample is not None and (not isinstance(sample, int) or isinstance(sample, bool) or len(texts) > 1):
            raise DataError(f"{path}:{number}: field 'sample' must be an integer, on a row with one rationale")
        out.extend((row, t, sample) for t in texts)
    return out


def _pairs_mcc_kd(path: Path) -> list[tuple[dict, str, int | None]]:
    out = []
    for i, row in enumerate(read_json(path)):
        if "instruction" not in row or "output" not in row:
            raise DataError(f"{path}: item {i}: expected 'instruction' and 'output'")
        texts = row["output"] if isinstance(row["output"], list) else [row["output"]]
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}: item {i}: 'output' must be a string or a list of strings")
        out.extend(({"question": row["instruction"].split("Answer Choices:")[0]}, t, None) for t in texts if t)
    return out


def _pairs_palm_dss(folder: Path, split: str) -> list[tuple[dict, str, int | None]]:
    name = folder.name
    inputs = read_jsonl(folder / f"{name}_{split}.json")
    chunks = sorted(glob.glob(str(folder / "llm" / f"{split}_CoT_*.json")), key=lambda p: int(p.rsplit("_", 1)[1][:-5]))
    if not chunks:
        raise DataError(f"{folder}/llm: no {split}_CoT_*.json files")
    completions = [c for chunk in chunks for c in read_json(Path(chunk))]
    if len(completions) != len(inputs):
        raise DataError(f"{folder}: {len(inputs)} {split} questions but {len(completions)} completions")
    out = []
    for row, text in zip(inputs, completions):
        question = row.get("input", row.get("question"))
        out.append(({"question": question}, _completion_at_first_question(text), None))
    return out


def import_rationales(
    path: Path, questions: list[Question], fmt: str = "auto", split: str = "train", teacher: str | None = None
) -> tuple[list[dict], dict]:
    """Rationales for `questions` from a file, every one kept: a question's rationales that the file does
    not number (no `sample` field) are numbered in file order. Returns (records, counts): how many
    rationales were read, kept and dropped, by reason."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: rationale file not found")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    pairs = {"jsonl": _pairs_jsonl, "mcc_kd": _pairs_mcc_kd}.get(fmt)
    entries = _pairs_palm_dss(path, split) if fmt == "palm_dss" else pairs(path)
    by_id = {q.id: q for q in questions}
    by_text = {_key(q.question.split("Answer Choices:")[0]): q for q in questions}
    records, unmatched, samples = [], 0, {}
    for row, text, sample in entries:
        question = by_id.get(row.get("id")) or by_text.get(_key(str(row.get("question", ""))))
        if question is None:
            unmatched += 1
            continue
        taken = samples.setdefault(question.id, set())
        if sample is None:
            sample = next(k for k in range(len(taken) + 1) if k not in taken)
        elif sample in taken:
            raise DataError(
                f"{path}: question {question.id} has two rationales numbered sample {sample}; number each "
                "rationale of a question once, or leave 'sample' out and they are numbered in file order"
            )
        taken.add(sample)
        records.append(rationale_record(question, text, teacher=teacher or f"file:{path.name}", sample=sample))
    if not records:
        raise DataError(f"{path}: none of its {len(entries)} rationales match a question of this split")
    counts = {"read": len(entries), "kept": len(records), "dropped": {"no question of this split": unmatched}}
    return records, counts


def first_correct_per_question(records: list[dict], questions: int | None = None) -> list[dict]:
    """Rows of a teacher file (teacher.kind=file) with the first correct rationale of each question, for
    the first `questions` questions that have one: one rationale per question, as the studies train on."""
    chosen: dict[str, dict] = {}
    for r in records:
        if r["correct"] and r["id"] not in chosen and (questions is None or len(chosen) < questions):
            chosen[r["id"]] = {"id": r["id"], "rationale": r["raw"]}
    return list(chosen.values())
