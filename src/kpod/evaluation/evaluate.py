"""Accuracy by batched greedy generation (left padding for causal LMs) and answer extraction.

Under `accelerate launch` the questions are split across processes and the predictions gathered
back in order.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kpod.artifacts import write_json, write_jsonl
from kpod.data.datasets import Question
from kpod.rationale import answers_match, extract_answer, format_prompt
from kpod.student.load import is_seq2seq

_NEXT_QUESTION = re.compile(r"\n\s*Q:|\sQ: ")
_ANSWER_END = re.compile(r"the answer is[^\n]*?(?:\.(?=\s|$)|\n|$)", re.IGNORECASE)


def clean_generation(text: str) -> str:
    """Cut a generation where the model starts a new question, or after its first answer sentence."""
    cut = _NEXT_QUESTION.search(text)
    if cut:
        text = text[: cut.start()]
    end = _ANSWER_END.search(text)
    return text[: end.end()].strip() if end else text.strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 16,
             progress: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuations of `prompts`, in order, batched."""
    seq2seq = is_seq2seq(model)
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    outputs: dict[int, str] = {}
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if not seq2seq:
                out = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
                outputs[i] = text
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [outputs[i] for i in range(len(prompts))]


def evaluate_questions(model, tokenizer, questions: list[Question], max_new_tokens: int = 256, batch_size: int = 16,
                       progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics, predictions). Data-parallel when several processes run under accelerate/torchrun."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo across CPU processes under torchrun
    if next(model.parameters()).device != state.device:
        model.to(state.device)
    indices = list(range(len(questions)))
    with state.split_between_processes(indices) as mine:
        texts = generate(model, tokenizer, [format_prompt(questions[i].question) for i in mine], max_new_tokens,
                         batch_size, progress and state.is_local_main_process, desc="evaluate")
        local = [(i, t) for i, t in zip(mine, texts)]
    gathered = gather_object(local) if state.num_processes > 1 else local
    by_index = dict(gathered)
    predictions = []
    for i, question in enumerate(questions):
        raw = by_index[i]
        cleaned = clean_generation(raw)
        pred = extract_answer(cleaned, question.task, question.choices)
        predictions.append({"id": question.id, "question": question.question, "gold": question.answer,
                            "prediction": pred, "correct": answers_match(pred, question.answer, question.task),
                            "answer_sentence": "the answer is" in cleaned.lower(), "output": cleaned, "raw_output": raw})
    n = len(predictions)
    correct = sum(p["correct"] for p in predictions)
    metrics = {"accuracy": 100.0 * correct / n if n else 0.0, "correct": correct, "total": n,
               "answer_found": sum(p["prediction"] is not None for p in predictions),
               "answer_sentence": sum(p["answer_sentence"] for p in predictions)}
    return metrics, predictions


def write_eval(folder: Path, metrics: dict, predictions: list[dict]) -> None:
    write_json(folder / "metrics.json", metrics)
    write_jsonl(folder / "predictions.jsonl", predictions)
