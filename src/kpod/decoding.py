"""Student decoding: batched greedy generation (left padding for causal LMs) and answer extraction.

Under `accelerate launch` the questions are split across processes and the predictions gathered
back in order.
"""

from __future__ import annotations

import logging
import re
import statistics

import torch
from accelerate.utils.memory import release_memory, should_reduce_batch_size
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from kpod import placement
from kpod.data.datasets import Question
from kpod.models import is_seq2seq
from kpod.parallel import map_across_processes, process_state
from kpod.rationale import ANSWER_TRIGGER, answers_match, extract_answer, format_prompt

log = logging.getLogger(__name__)

_NEXT_QUESTION = re.compile(r"\n\s*Q:|\sQ: ")
# Stop strings for a server: each can only end a generation where clean_generation cuts anyway.
SERVER_STOP = ["\nQ:"]
_ANSWER_END = re.compile(ANSWER_TRIGGER + r"[^\n]*?(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)


def clean_generation(text: str) -> str:
    """Cut a generation where the model starts a new question, or after its first answer sentence."""
    cut = _NEXT_QUESTION.search(text)
    if cut:
        text = text[: cut.start()]
    end = _ANSWER_END.search(text)
    return text[: end.end()].strip() if end else text.strip()


_ANSWER_COMPLETE = re.compile(ANSWER_TRIGGER + r"[^\n]*?(?:\.\s|\n)", re.IGNORECASE)


def generation_complete(text: str) -> bool:
    """True once more text cannot change clean_generation(text): the answer sentence has ended (a
    full stop followed by a space, or a newline) or a new question has begun."""
    return bool(_NEXT_QUESTION.search(text) or _ANSWER_COMPLETE.search(text))


class StopWhenComplete(StoppingCriteria):
    """Ends each sequence of a batch as soon as its text is complete, so a student that keeps talking
    after its answer (or a base model writing the next question) does not hold the batch to max_new_tokens.

    The text of each sequence grows by the new tokens' text only (incremental detokenisation: the
    tokens since the last whole character are decoded with a few before them, and the difference is
    the new text), so a step costs a few tokens' decoding per unfinished sequence, not the batch's
    whole continuation. A row's new tokens are decoded only when one of its last two tokens can end a
    complete text (see `completion_tokens`); until then they wait, and are decoded with the next ones."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.marks = completion_tokens(tokenizer)
        self.decode = _batch_decoder(tokenizer)
        self.ids: list[list[int]] = []  # each sequence's continuation so far
        self.texts: list[str] = []
        self.offsets: list[tuple[int, int]] = []  # (prefix, read): text holds ids[:read]; decode from prefix
        self.done: list[bool] = []

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if not self.ids:
            rows = len(input_ids)
            self.ids, self.texts, self.offsets, self.done = (
                [[] for _ in range(rows)],
                [""] * rows,
                [(0, 0)] * rows,
                [False] * rows,
            )
        added = 0
        for row, new in enumerate(input_ids[:, self.prompt_length + len(self.ids[0]) :].tolist()):
            self.ids[row].extend(new)
            added = len(new)
        marks = self.marks
        open_rows = [
            row
            for row in range(len(self.ids))
            if not self.done[row] and any(t in marks for t in self.ids[row][-added - 1 :])
        ]
        if not open_rows:
            return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)
        decode = self.decode
        windows = [
            (self.ids[r][self.offsets[r][0] : self.offsets[r][1]], self.ids[r][self.offsets[r][0] :]) for r in open_rows
        ]
        before = decode([w[0] for w in windows])
        after = decode([w[1] for w in windows])
        for row, old, new in zip(open_rows, before, after):
            if len(new) > len(old) and not new.endswith("\ufffd"):  # a whole new character at least
                self.texts[row] += new[len(old) :]
                self.offsets[row] = (self.offsets[row][1], len(self.ids[row]))
                self.done[row] = generation_complete(self.texts[row])
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _batch_decoder(tokenizer):
    """batch_decode without special tokens; straight through the Rust tokenizer where that gives the same
    text (a fast tokenizer without clean-up of spaces), skipping the Python wrapper's per-call work."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(tokenizer, "is_fast", False) and not tokenizer.clean_up_tokenization_spaces:
        return lambda rows: backend.decode_batch(rows, skip_special_tokens=True)
    return lambda rows: tokenizer.batch_decode(rows, skip_special_tokens=True)


_COMPLETION_TOKENS: dict[int, tuple[object, frozenset[int]]] = {}


def completion_tokens(tokenizer) -> frozenset[int]:
    """The token ids that can end a complete text: a match of generation_complete ends with ':', '\n',
    or whitespace after '.' or 'Q:', so the token that completes a text, or the one before it, decodes
    to a piece holding '.', ':' or '\n', or to nothing visible (special, byte and space pieces, whose
    text shows only with their neighbours). Decoded once per tokenizer."""
    cached = _COMPLETION_TOKENS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
        marks = frozenset(
            i for i, p in enumerate(pieces) if not p.strip() or "\ufffd" in p or any(c in p for c in ".:\n")
        )
        cached = _COMPLETION_TOKENS[id(tokenizer)] = (tokenizer, marks)
    return cached[1]


@torch.no_grad()
def greedy_continuations(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
    stop_when_complete: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts`, in order, batched. stop_when_complete: end each one once its
    answer sentence is complete (what clean_generation keeps is then the same, computed sooner)."""
    seq2seq = is_seq2seq(model)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    outputs: dict[int, str] = {}
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    try:
        while len(outputs) < len(prompts):
            idx = order[len(outputs) : len(outputs) + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            prompt_length = 0 if seq2seq else enc["input_ids"].shape[1]
            stopping = StoppingCriteriaList([StopWhenComplete(tokenizer, prompt_length)] if stop_when_complete else [])
            try:
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    stopping_criteria=stopping,
                )
            except Exception as exc:  # out of memory: the same questions again in smaller batches
                if batch_size == 1 or not should_reduce_batch_size(exc):
                    raise
                batch_size = max(1, len(idx) // 2)
                release_memory()
                log.warning(
                    "out of memory generating %d answers at once; going on with batches of %d", len(idx), batch_size
                )
                continue
            out = out[:, prompt_length:]
            for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
                outputs[i] = text
            bar.update(len(idx))
    finally:
        bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
    return [outputs[i] for i in range(len(prompts))]


def evaluate_questions(
    model, tokenizer, questions: list[Question], max_new_tokens: int = 256, batch_size: int = 16, progress: bool = True
) -> tuple[dict, list[dict]]:
    """(metrics, predictions). Data-parallel when several processes run under accelerate/torchrun."""
    state = process_state()
    where = placement.device()
    if next(model.parameters()).device != where:
        model.to(where)
    prompts = [format_prompt(q.question) for q in questions]
    texts = map_across_processes(
        state,
        lambda mine: greedy_continuations(
            model,
            tokenizer,
            prompts=mine,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress and state.is_local_main_process,
            desc="evaluate",
        ),
        prompts,
    )
    return score_outputs(questions, texts)


def score_outputs(questions: list[Question], raw_outputs: list[str]) -> tuple[dict, list[dict]]:
    """(metrics, predictions) of a student's raw continuations, one per question, from any backend."""
    predictions = []
    for question, raw in zip(questions, raw_outputs, strict=True):
        cleaned = clean_generation(raw)
        pred = extract_answer(cleaned, question.task, question.choices)
        predictions.append(
            {
                "id": question.id,
                "question": question.question,
                "gold": question.answer,
                "prediction": pred,
                "correct": answers_match(pred, question.answer, question.task),
                "answer_sentence": ANSWER_TRIGGER in cleaned.lower(),
                "output": cleaned,
                "raw_output": raw,
            }
        )
    n = len(predictions)
    correct = sum(p["correct"] for p in predictions)
    metrics = {
        "accuracy": 100.0 * correct / n if n else 0.0,
        "correct": correct,
        "total": n,
        "answer_found": sum(p["prediction"] is not None for p in predictions),
        "answer_sentence": sum(p["answer_sentence"] for p in predictions),
    }
    return metrics, predictions


@torch.no_grad()
def rationale_loss(
    model, tokenizer, references: list[tuple[Question, str]], batch_size: int = 16, max_tokens: int = 512
) -> dict:
    """The held-out rationale loss: the student's mean NLL per token of reference rationales (and the
    answer sentence) given each question, teacher-forced, in the training layout with the whole rationale
    as the target (every trainer's held-out loss). references: (question, rationale) pairs. Returns the
    mean over questions of each question's mean NLL per token, its standard error and the count."""
    from kpod.layout import DistillCollator, DistillExample, encode_example, source_target_item, token_nll
    from kpod.rationale import split_steps

    seq2seq = is_seq2seq(model)
    where = next(model.parameters()).device
    collate = DistillCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, seq2seq)
    per_question = []
    was_training = model.training
    model.eval()
    for start in range(0, len(references), batch_size):
        items = []
        for question, rationale in references[start : start + batch_size]:
            example = DistillExample(
                question.id, question.question, answer=question.answer, steps=split_steps(rationale)
            )
            enc = encode_example(
                example, 0, tokenizer, seq2seq=seq2seq, max_input_tokens=max_tokens, max_target_tokens=max_tokens
            )
            items.append(source_target_item(enc.source_ids, enc.target_ids, seq2seq))
        batch = placement.to_device(collate(items), where)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **({"labels": batch["labels"]} if seq2seq else {}),
        ).logits
        nll = token_nll(logits, batch["labels"], causal=not seq2seq)
        counted = (batch["labels"][:, 1:] if not seq2seq else batch["labels"]) != -100
        per_question += (nll.sum(1) / counted.sum(1).clamp(min=1)).cpu().tolist()
    model.train(was_training)
    n = len(per_question)
    mean = statistics.mean(per_question) if n else None
    se = statistics.stdev(per_question) / n**0.5 if n > 1 else None
    return {"mean": mean, "se": se, "questions": n}
