"""Token weights stored over character offsets, mapped onto any later tokenisation of any slice.

The weighting stage stores, per rationale, its student-tokenizer tokens as character spans with a
weight each. Training and difficulty tokenise other text (a slice of the rationale, with a prompt
around it), so a token there takes the weights of the stored tokens its characters overlap: the
max (default) or the character-weighted mean. When both tokenisations are identical the mapping
returns the stored weights exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Overlap = Literal["max", "mean"]  # how a token takes the weights of the stored tokens it overlaps


@dataclass
class TokenWeights:
    offsets: list[tuple[int, int]]
    weights: list[float]

    def char_array(self, length: int) -> np.ndarray:
        """Per character, the weight of the stored token covering it (NaN where none does)."""
        chars = np.full(length, np.nan, dtype=np.float64)
        for (start, end), weight in zip(self.offsets, self.weights):
            if end > start:
                segment = chars[start:end]
                # overlapping sentencepiece spans: a character keeps the larger weight
                np.fmax(segment, weight, out=segment)
        return chars


def span_weight(chars: np.ndarray, start: int, end: int, how: Overlap = "max") -> float | None:
    """Weight of a token covering characters [start, end) of the rationale, None if unknown."""
    start, end = max(start, 0), min(end, len(chars))
    if end <= start:
        return None
    segment = chars[start:end]
    known = segment[~np.isnan(segment)]
    if known.size == 0:
        return None
    return float(known.max() if how == "max" else known.mean())


def map_weights(
    chars: np.ndarray, offsets: list[tuple[int, int]], shift: int = 0, how: Overlap = "max"
) -> list[float | None]:
    """Weights for tokens whose offsets are relative to a text that starts `shift` characters into
    the rationale (tokens outside the rationale get None)."""
    return [span_weight(chars, a + shift, end=b + shift, how=how) if b > a else None for a, b in offsets]


def loss_weights(weights: np.ndarray, body: np.ndarray, floor: float = 0.0, mean_one: bool = True) -> np.ndarray:
    """The weights a loss applies: w' = floor + (1 - floor) w on the rationale's tokens (`body`), then,
    with `mean_one`, rescaled to mean 1 over them; tokens outside the body are left as given."""
    out = np.array(weights, dtype=np.float64)
    out[body] = floor + (1 - floor) * out[body]
    if mean_one and body.any():
        mean = out[body].mean()
        if mean > 0:
            out[body] /= mean
    return out
