"""Batches for the weighting module: every rationale with all its prefixes (one reasoner batch)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from kpod.rationale import ANSWER_CUE, QUESTION_SEPARATOR, step_char_spans


@dataclass
class WeightingItem:
    key: str
    rationale: str
    steps: list[str]
    question: str
    answer: str


def prefix_lengths(token_ends: list[int], steps: list[str], mode: str, rng: random.Random | None = None) -> list[int]:
    """Token counts of the rationale prefixes that end at step boundaries (always the full one)."""
    n = len(token_ends)
    if n == 0:
        return [0]
    if mode == "all":
        return list(range(1, n + 1))
    if mode == "full":
        return [n]
    lengths = sorted({sum(1 for end in token_ends if end <= stop) for _, stop in step_char_spans(steps)} | {n})
    lengths = [k for k in lengths if k > 0] or [n]
    if mode.startswith("sample:"):
        keep = int(mode.split(":")[1])
        chosen = set((rng or random).sample(lengths[:-1], min(keep - 1, len(lengths) - 1))) if keep > 1 else set()
        lengths = sorted(chosen | {n})
    return lengths


class PrefixCollator:
    def __init__(
        self,
        student_tokenizer,
        reasoner_tokenizer,
        reasoner_seq2seq: bool,
        prefixes: str = "steps",
        max_rationale_tokens: int = 256,
        max_question_tokens: int = 192,
        seed: int = 0,
    ):
        self.student_tokenizer, self.reasoner_tokenizer = student_tokenizer, reasoner_tokenizer
        self.seq2seq, self.prefixes = reasoner_seq2seq, prefixes
        self.max_rationale_tokens, self.max_question_tokens = max_rationale_tokens, max_question_tokens
        self.rng = random.Random(seed)
        cue = reasoner_tokenizer(ANSWER_CUE, add_special_tokens=False)["input_ids"]
        self.cue_ids = torch.tensor(cue + ([reasoner_tokenizer.eos_token_id] if reasoner_seq2seq else []))

    def rationale_tokens(self, rationale: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.student_tokenizer(
            rationale,
            add_special_tokens=False,
            return_offsets_mapping=True,
            truncation=True,
            max_length=self.max_rationale_tokens,
        )
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def _answer_ids(self, answer: str) -> list[int]:
        tok = self.reasoner_tokenizer
        if self.seq2seq:
            return tok(answer, add_special_tokens=True)["input_ids"]
        return tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def __call__(self, items: list[WeightingItem]) -> dict:
        rationale_ids, offsets, owners, lengths = [], [], [], []
        for r, item in enumerate(items):
            ids, offs = self.rationale_tokens(item.rationale)
            rationale_ids.append(ids)
            offsets.append(offs)
            for k in prefix_lengths([b for _, b in offs], item.steps, mode=self.prefixes, rng=self.rng):
                owners.append(r)
                lengths.append(k)
        questions = [
            self.reasoner_tokenizer(
                i.question + QUESTION_SEPARATOR,
                add_special_tokens=False,
                truncation=True,
                max_length=self.max_question_tokens,
            )["input_ids"]
            for i in items
        ]
        answers = [self._answer_ids(i.answer) for i in items]
        pad = self.student_tokenizer.pad_token_id
        rpad = self.reasoner_tokenizer.pad_token_id
        return {
            "rationale_ids": _pad(rationale_ids, pad),
            "rationale_mask": _pad([[1] * len(x) for x in rationale_ids], 0),
            "question_ids": _pad(questions, rpad),
            "question_mask": _pad([[1] * len(x) for x in questions], 0),
            "prefix_owner": torch.tensor(owners),
            "prefix_length": torch.tensor(lengths),
            "cue_ids": self.cue_ids,
            "answer_ids": _pad(answers, -100),
            "offsets": offsets,
        }


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    longest = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [value] * (longest - len(r)) for r in rows], dtype=torch.long)
