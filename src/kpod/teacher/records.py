"""One row of `rationales/<split>.jsonl`, whatever teacher wrote it."""

from __future__ import annotations

from kpod.data.datasets import Question
from kpod.rationale import answers_match, extract_answer, split_steps, strip_answer_sentence


def rationale_record(
    question: Question,
    text: str,
    teacher: str,
    sample: int = 0,
    usage: dict | None = None,
    latency_s: float | None = None,
) -> dict:
    """Normalise a teacher completion: the answer is extracted from the whole text, the stored
    rationale drops the final answer sentence (the training template appends its own)."""
    answer = extract_answer(text, question.task, question.choices)
    rationale = strip_answer_sentence(text.strip())
    return {
        "id": question.id,
        "sample": sample,
        "question": question.question,
        "gold": question.answer,
        "rationale": rationale,
        "steps": split_steps(rationale),
        "answer": answer,
        "correct": answers_match(answer, question.answer, question.task),
        "teacher": teacher,
        "usage": usage or {},
        "latency_s": latency_s,
        "raw": text,
    }
