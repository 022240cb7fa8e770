"""Teachers that need no API: rationales imported from a file, or the dataset's own solutions."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from kpod.data.datasets import DataError, Question, read_json, read_jsonl
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


def _pairs_jsonl(path: Path) -> list[tuple[dict, str, int]]:
    rows = read_jsonl(path)
    out = []
    for number, row in enumerate(rows, 1):
        text = row.get("rationale", row.get("output", row.get("text")))
        if text is None or not ("id" in row or "question" in row):
            raise DataError(f"{path}:{number}: expected 'id' or 'question' and 'rationale' (or 'output'/'text')")
        texts = text if isinstance(text, list) else [text]
        for k, t in enumerate(texts):
            out.append((row, t, row.get("sample", k)))
    return out


def _pairs_mcc_kd(path: Path) -> list[tuple[dict, str, int]]:
    out = []
    for i, row in enumerate(read_json(path)):
        if "instruction" not in row or "output" not in row:
            raise DataError(f"{path}: item {i}: expected 'instruction' and 'output'")
        texts = row["output"] if isinstance(row["output"], list) else [row["output"]]
        out.extend(
            ({"question": row["instruction"].split("Answer Choices:")[0]}, t, k) for k, t in enumerate(texts) if t
        )
    return out


def _pairs_palm_dss(folder: Path, split: str) -> list[tuple[dict, str, int]]:
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
        out.append(({"question": question}, _completion_at_first_question(text), 0))
    return out


def import_rationales(
    path: Path, questions: list[Question], fmt: str = "auto", split: str = "train", teacher: str | None = None
) -> tuple[list[dict], int]:
    """Rationales for `questions` from a file; returns (records, how many file entries matched none)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: rationale file not found")
    fmt = _detect_format(path) if fmt == "auto" else fmt
    pairs = {"jsonl": _pairs_jsonl, "mcc_kd": _pairs_mcc_kd}.get(fmt)
    entries = _pairs_palm_dss(path, split) if fmt == "palm_dss" else pairs(path)
    by_id = {q.id: q for q in questions}
    by_text = {_key(q.question.split("Answer Choices:")[0]): q for q in questions}
    records, unmatched, seen = [], 0, set()
    for row, text, sample in entries:
        question = by_id.get(row.get("id")) or by_text.get(_key(str(row.get("question", ""))))
        if question is None:
            unmatched += 1
            continue
        if (question.id, sample) in seen:
            continue
        seen.add((question.id, sample))
        records.append(rationale_record(question, text, teacher=teacher or f"file:{path.name}", sample=sample))
    if not records:
        raise DataError(f"{path}: none of its {len(entries)} rationales match a question of this split")
    return records, unmatched
