"""The student's (source, target) token layout, shared by training and the difficulty stage.

In curriculum phase t, example i gives steps 1..c_i(t) in the source and steps c_i(t)+1..n_i plus the answer
sentence as the target (method doc section 7). Seq2seq models get them as encoder input and labels;
causal models get source + target in one sequence with the source masked out of the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kpod.rationale import answer_sentence, format_prompt
from kpod.token_weights import TokenWeights


@dataclass
class DistillExample:
    key: str
    question: str
    answer: str
    steps: list[str]
    weights: TokenWeights | None = None
    input_steps: list[int] | None = None  # c_i(t) per phase; None: no steps in the input

    @property
    def rationale(self) -> str:
        return "".join(self.steps)


def split_texts(example: DistillExample, n_input_steps: int) -> tuple[str, str, int]:
    """(source, target, where the rationale starts in source + target) at c = n_input_steps.

    source + target is the same full-rationale training text for every c, character for character:
    the prompt, a space, the rationale (trailing whitespace dropped), a space and the answer sentence.
    The source ends after step c with the separator that ends it (a newline, a space) verbatim.
    """
    prefix = format_prompt(example.question) + " "
    rationale = example.rationale.rstrip()
    full = (
        f"{prefix}{rationale} {answer_sentence(example.answer)}"
        if rationale
        else prefix + answer_sentence(example.answer)
    )
    given = len("".join(example.steps[:n_input_steps]))
    if given >= len(rationale):  # every step given: the target is the answer sentence
        given = len(rationale) + 1 if rationale else 0
    boundary = len(prefix) + given
    return full[:boundary], full[boundary:], len(prefix)


@dataclass
class EncodedExample:
    source_ids: list[int]
    target_ids: list[int]
    target_offsets: list[tuple[int, int]]  # character spans in the rationale ((0, 0) outside it)
    in_rationale: list[bool]  # target token lies in the rationale part (not the answer sentence)
    input_truncated: bool
    target_truncated: bool


def encode_example(
    example: DistillExample, n_input_steps: int, tokenizer, seq2seq: bool, max_input_tokens: int, max_target_tokens: int
) -> EncodedExample:
    """Tokenise (source, target) at a given c; target offsets are mapped into rationale characters.

    A causal LM reads source + target as one text, so that text is tokenised once and cut at the
    boundary: a token that reaches past it (" The" after a sentence's space) belongs to the target, and
    the tokens are those of the full rationale at every c. A seq2seq model tokenises the two apart.
    """
    source, target, start = split_texts(example, n_input_steps)
    rationale_len = len(example.rationale.rstrip())
    if seq2seq:
        src = tokenizer(source, add_special_tokens=True)["input_ids"]
        tgt = tokenizer(target, add_special_tokens=True, return_offsets_mapping=True)
        target_ids = tgt["input_ids"]
        offsets = [(a + len(source), b + len(source)) for a, b in tgt["offset_mapping"]]
    else:
        enc = tokenizer(
            source + target, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
        )
        text = [i for i, special in enumerate(enc["special_tokens_mask"]) if not special]
        leading = enc["input_ids"][: text[0] if text else 0]  # a BOS the tokenizer puts first
        in_source = sum(1 for i in text if enc["offset_mapping"][i][1] <= len(source))
        cut = text[in_source:]
        src = leading + [enc["input_ids"][i] for i in text[:in_source]]
        target_ids = [enc["input_ids"][i] for i in cut] + [tokenizer.eos_token_id]
        offsets = [tuple(enc["offset_mapping"][i]) for i in cut] + [(0, 0)]
    input_truncated = len(src) > max_input_tokens
    if input_truncated:
        src = src[: max_input_tokens - 1] + src[-1:] if seq2seq else src[:max_input_tokens]
    target_truncated = len(target_ids) > max_target_tokens
    if target_truncated:
        target_ids, offsets = target_ids[:max_target_tokens], offsets[:max_target_tokens]
    in_rationale = [b > a and a < start + rationale_len for a, b in offsets]
    offsets = [(max(a - start, 0), b - start) if inside else (0, 0) for (a, b), inside in zip(offsets, in_rationale)]
    return EncodedExample(
        src,
        target_ids,
        target_offsets=offsets,
        in_rationale=in_rationale,
        input_truncated=input_truncated,
        target_truncated=target_truncated,
    )


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
            [[1] * len(i["input_ids"]) + [0] * (batch["input_ids"].shape[1] - len(i["input_ids"])) for i in items]
        )
        batch["labels"] = pad("labels", -100)
        batch["token_weights"] = pad("token_weights", 0.0).float()
        return batch


def source_target_item(
    source_ids: list[int], target_ids: list[int], seq2seq: bool, target_weights: list[float] | None = None
) -> dict:
    """One batch item: seq2seq keeps source and target apart; a causal LM reads source + target as one
    sequence, with the source masked out of the labels and the weights."""
    weights = target_weights if target_weights is not None else [1.0] * len(target_ids)
    if seq2seq:
        return {"input_ids": source_ids, "labels": target_ids, "token_weights": weights}
    return {
        "input_ids": source_ids + target_ids,
        "labels": [-100] * len(source_ids) + target_ids,
        "token_weights": [0.0] * len(source_ids) + weights,
    }


def token_nll(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Per-token negative log-likelihood, (batch x positions), 0 where the label is -100. Causal LMs
    predict token j + 1 at position j, so their logits lose the last position and labels the first."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
