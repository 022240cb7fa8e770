"""Training examples for the student: input, target and one weight per target token.

The layout of source and target is kpod.layout's; token weights come from the stored character
offsets. Each (example, c) pair is tokenised once and cached, so the schedule can change c at
every epoch without re-tokenising the dataset.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from kpod.layout import DistillExample, encode_example, source_target_item
from kpod.token_weights import Overlap, loss_weights, map_weights

log = logging.getLogger(__name__)


class DistillDataset(Dataset):
    """Items are dicts of lists: input_ids, labels (aligned with input_ids for causal LMs) and
    token_weights; the collator pads them."""

    def __init__(
        self,
        examples: list[DistillExample],
        tokenizer,
        seq2seq: bool,
        max_input_tokens: int = 512,
        max_target_tokens: int = 384,
        weight_norm: Literal["example_mean", "none"] = "example_mean",
        weight_floor: float = 0.0,
        overlap: Overlap = "max",
    ):
        if not examples:
            raise ValueError("no training examples")
        self.examples = examples
        self.tokenizer = tokenizer
        self.seq2seq = seq2seq
        self.max_input_tokens = max_input_tokens
        self.max_target_tokens = max_target_tokens
        self.weight_norm = weight_norm
        self.weight_floor = weight_floor
        self.overlap = overlap
        self.phase = 0
        self.truncated_inputs: set[tuple[str, int]] = set()
        self.truncated_targets: set[tuple[str, int]] = set()
        self._cache: dict[tuple[int, int], dict] = {}
        self._chars = [e.weights.char_array(len(e.rationale)) if e.weights else None for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def n_input_steps(self, index: int, phase: int | None = None) -> int:
        schedule = self.examples[index].input_steps
        if not schedule:
            return 0
        phase = self.phase if phase is None else phase
        return schedule[min(phase, len(schedule) - 1)]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """An item by index at `self.phase`, or by (index, phase): the training sampler says each item's
        phase with its index, so DataLoader worker processes (each with its own copy of the dataset) need
        no shared state and read ahead without lag."""
        index, phase = key if isinstance(key, tuple) else (key, None)
        c = self.n_input_steps(index, phase)
        item = self._cache.get((index, c))
        if item is None:
            item = self._cache[(index, c)] = self._encode(index, c)
        return item

    def encode_all(self) -> int:
        """Tokenise and map the weights of every (example, c) the schedule uses, once, before training
        (and before worker processes copy the dataset); returns how many encodings there are."""
        for index, example in enumerate(self.examples):
            for c in sorted(set(example.input_steps or [0])):
                if (index, c) not in self._cache:
                    self._cache[(index, c)] = self._encode(index, c)
        return len(self._cache)

    def _encode(self, index: int, c: int) -> dict:
        example = self.examples[index]
        enc = encode_example(
            example,
            c,
            tokenizer=self.tokenizer,
            seq2seq=self.seq2seq,
            max_input_tokens=self.max_input_tokens,
            max_target_tokens=self.max_target_tokens,
        )
        if enc.input_truncated:
            self.truncated_inputs.add((example.key, c))
        if enc.target_truncated:
            self.truncated_targets.add((example.key, c))
        weights = self._target_weights(index, enc.target_offsets, enc.in_rationale)
        return source_target_item(enc.source_ids, enc.target_ids, seq2seq=self.seq2seq, target_weights=weights)

    def _target_weights(self, index: int, offsets: list[tuple[int, int]], in_rationale: list[bool]) -> list[float]:
        chars = self._chars[index]
        if chars is None:
            return [1.0] * len(offsets)
        mapped = map_weights(chars, offsets, how=self.overlap)
        body = np.array(in_rationale, dtype=bool)
        # 1 outside the rationale, and inside it for a token without a stored weight
        raw = np.array([w if (inside and w is not None) else 1.0 for w, inside in zip(mapped, in_rationale)])
        weights = loss_weights(raw, body, floor=self.weight_floor, mean_one=self.weight_norm == "example_mean")
        return weights.tolist()

    def truncation_report(self) -> str | None:
        if not (self.truncated_inputs or self.truncated_targets):
            return None
        return (
            f"truncated {len(self.truncated_inputs)} inputs (> {self.max_input_tokens} tokens) and "
            f"{len(self.truncated_targets)} targets (> {self.max_target_tokens} tokens); raise "
            "student.max_input_tokens / student.max_target_tokens to keep them whole"
        )
