"""Training examples for the student: input, target and one weight per target token.

At stage t, example i gives steps 1..c_i(t) in the input and steps c_i(t)+1..n_i plus the answer
sentence as the target (method doc section 7). Token weights come from the stored character
offsets. Each (example, c) pair is tokenised once and cached, so the schedule can change c at
every epoch without re-tokenising the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kpod.rationale import answer_sentence, format_prompt
from kpod.weighting.offsets import TokenWeights, map_weights

log = logging.getLogger(__name__)


@dataclass
class DistillExample:
    key: str
    question: str
    answer: str
    steps: list[str]
    weights: TokenWeights | None = None
    input_steps: list[int] | None = None  # c_i(t) per stage; None: no steps in the input

    @property
    def rationale(self) -> str:
        return "".join(self.steps)


def split_texts(example: DistillExample, n_input_steps: int) -> tuple[str, str, int, int]:
    """(source, target, where the rationale part of the target starts in the rationale, its length)."""
    head = "".join(example.steps[:n_input_steps])
    tail = "".join(example.steps[n_input_steps:])
    source = format_prompt(example.question)
    if head.strip():
        source = f"{source} {head.strip()}"
    lead = len(tail) - len(tail.lstrip())
    body = tail.strip()
    target = f"{body} {answer_sentence(example.answer)}" if body else answer_sentence(example.answer)
    return source, target, len(head) + lead, len(body)


@dataclass
class EncodedExample:
    source_ids: list[int]
    target_ids: list[int]
    target_offsets: list[tuple[int, int]]  # character spans in the rationale ((0, 0) outside it)
    in_rationale: list[bool]  # target token lies in the rationale part (not the answer sentence)
    input_truncated: bool
    target_truncated: bool


def encode_example(example: DistillExample, n_input_steps: int, tokenizer, seq2seq: bool, max_input_tokens: int,
                   max_target_tokens: int) -> EncodedExample:
    """Tokenise (source, target) at a given c; target offsets are mapped into rationale characters."""
    source, target, shift, body_len = split_texts(example, n_input_steps)
    src = tokenizer(source, add_special_tokens=True)["input_ids"]
    if seq2seq:
        tgt = tokenizer(target, add_special_tokens=True, return_offsets_mapping=True)
        target_ids, offsets = tgt["input_ids"], [tuple(o) for o in tgt["offset_mapping"]]
    else:
        tgt = tokenizer(" " + target, add_special_tokens=False, return_offsets_mapping=True)
        target_ids = tgt["input_ids"] + [tokenizer.eos_token_id]
        offsets = [(max(a - 1, 0), max(b - 1, 0)) for a, b in tgt["offset_mapping"]] + [(0, 0)]
    input_truncated = len(src) > max_input_tokens
    if input_truncated:
        src = src[: max_input_tokens - 1] + src[-1:] if seq2seq else src[:max_input_tokens]
    target_truncated = len(target_ids) > max_target_tokens
    if target_truncated:
        target_ids, offsets = target_ids[:max_target_tokens], offsets[:max_target_tokens]
    in_rationale = [b > a and a < body_len for a, b in offsets]
    offsets = [(a + shift, b + shift) if inside else (0, 0) for (a, b), inside in zip(offsets, in_rationale)]
    return EncodedExample(src, target_ids, offsets, in_rationale, input_truncated, target_truncated)


class DistillDataset(Dataset):
    """Items are dicts of lists: input_ids, labels (aligned with input_ids for causal LMs) and
    token_weights; the collator pads them."""

    def __init__(self, examples: list[DistillExample], tokenizer, seq2seq: bool, max_input_tokens: int = 512,
                 max_target_tokens: int = 384, weight_norm: str = "example_mean", overlap: str = "max"):
        if not examples:
            raise ValueError("no training examples")
        self.examples = examples
        self.tokenizer = tokenizer
        self.seq2seq = seq2seq
        self.max_input_tokens = max_input_tokens
        self.max_target_tokens = max_target_tokens
        self.weight_norm = weight_norm
        self.overlap = overlap
        self.stage = 0
        self.truncated_inputs: set[tuple[str, int]] = set()
        self.truncated_targets: set[tuple[str, int]] = set()
        self._cache: dict[tuple[int, int], dict] = {}
        self._chars = [e.weights.char_array(len(e.rationale)) if e.weights else None for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def n_input_steps(self, index: int) -> int:
        schedule = self.examples[index].input_steps
        if not schedule:
            return 0
        return schedule[min(self.stage, len(schedule) - 1)]

    def __getitem__(self, index: int) -> dict:
        c = self.n_input_steps(index)
        item = self._cache.get((index, c))
        if item is None:
            item = self._cache[(index, c)] = self._encode(index, c)
        return item

    def _encode(self, index: int, c: int) -> dict:
        example = self.examples[index]
        enc = encode_example(example, c, self.tokenizer, self.seq2seq, self.max_input_tokens, self.max_target_tokens)
        if enc.input_truncated:
            self.truncated_inputs.add((example.key, c))
        if enc.target_truncated:
            self.truncated_targets.add((example.key, c))
        weights = self._target_weights(index, enc.target_offsets, enc.in_rationale)
        if self.seq2seq:
            return {"input_ids": enc.source_ids, "labels": enc.target_ids, "token_weights": weights}
        return {"input_ids": enc.source_ids + enc.target_ids, "labels": [-100] * len(enc.source_ids) + enc.target_ids,
                "token_weights": [0.0] * len(enc.source_ids) + weights}

    def _target_weights(self, index: int, offsets: list[tuple[int, int]], in_rationale: list[bool]) -> list[float]:
        chars = self._chars[index]
        if chars is None:
            return [1.0] * len(offsets)
        mapped = map_weights(chars, offsets, how=self.overlap)
        weights = np.array([w if (inside and w is not None) else 1.0 for w, inside in zip(mapped, in_rationale)])
        body = np.array(in_rationale, dtype=bool)
        if self.weight_norm == "example_mean" and body.any():
            mean = weights[body].mean()
            if mean > 0:
                weights[body] = weights[body] / mean
        return weights.tolist()

    def truncation_report(self) -> str | None:
        if not (self.truncated_inputs or self.truncated_targets):
            return None
        return (f"truncated {len(self.truncated_inputs)} inputs (> {self.max_input_tokens} tokens) and "
                f"{len(self.truncated_targets)} targets (> {self.max_target_tokens} tokens); raise "
                "student.max_input_tokens / student.max_target_tokens to keep them whole")


class DistillCollator:
    """Pads a list of dataset items; causal LMs pad on the right for training."""

    def __init__(self, pad_token_id: int, seq2seq: bool):
        self.pad_token_id = pad_token_id
        self.seq2seq = seq2seq

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        def pad(key: str, value) -> torch.Tensor:
            longest = max(len(item[key]) for item in items)
            return torch.tensor([item[key] + [value] * (longest - len(item[key])) for item in items])

        batch = {"input_ids": pad("input_ids", self.pad_token_id)}
        batch["attention_mask"] = torch.tensor(
            [[1] * len(i["input_ids"]) + [0] * (batch["input_ids"].shape[1] - len(i["input_ids"])) for i in items])
        batch["labels"] = pad("labels", -100)
        batch["token_weights"] = pad("token_weights", 0.0).float()
        return batch
