"""Step difficulty, paper Eq. 8: d_k = - sum_{j in step k} softmax_k(w)_j log P(r_j | r_<j, x; theta_s)

theta_s is the pretrained student before distillation, teacher-forced on the full rationale
(c = 0, the template of the training target). Batched, without gradients, data-parallel under
`accelerate launch` (rationales split across processes, gathered in order).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from kpod.artifacts import RunPaths, rationale_key, read_rationales, read_weights, write_json, write_jsonl
from kpod.config import KPODConfig
from kpod.layout import DistillCollator, DistillExample, encode_example, source_target_item, token_nll
from kpod.models import is_seq2seq, load_student
from kpod.parallel import map_across_processes, process_state
from kpod.rationale import step_char_spans
from kpod.token_weights import Overlap, map_weights

log = logging.getLogger(__name__)


def step_difficulties(
    nll: np.ndarray,
    offsets: list[tuple[int, int]],
    in_rationale: list[bool],
    steps: list[str],
    chars: np.ndarray | None,
    how: Overlap = "max",
) -> list[float]:
    """Eq. 8 for one rationale: softmax of w over each step's tokens times their NLL, summed."""
    spans = step_char_spans(steps)
    weights = map_weights(chars, offsets, how=how) if chars is not None else [None] * len(offsets)
    result = []
    for start, end in spans:
        idx = [j for j, ((a, b), inside) in enumerate(zip(offsets, in_rationale)) if inside and start <= a < end]
        if not idx:
            result.append(0.0)
            continue
        w = (
            np.array([weights[j] if weights[j] is not None else 1.0 for j in idx])
            if chars is not None
            else np.zeros(len(idx))
        )
        soft = np.exp(w - w.max())
        soft /= soft.sum()
        result.append(float((soft * nll[idx]).sum()))
    return result


def compute_difficulties(cfg: KPODConfig) -> dict:
    """The calculate_difficulties stage: per rationale step, the pretrained student's weighted NLL of its
    tokens (difficulty/difficulties.jsonl and a summary)."""
    paths = RunPaths(cfg.run_dir)
    rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    weights = read_weights(paths.weights) if cfg.difficulty.use_weights else {}
    examples = [
        DistillExample(
            rationale_key(r), r["question"], answer=r["gold"], steps=r["steps"], weights=weights.get(rationale_key(r))
        )
        for r in rows
    ]
    model, tokenizer = load_student(cfg.student.model, cfg.student.dtype)
    state = process_state()
    seq2seq = is_seq2seq(model)
    scored = map_across_processes(
        state,
        lambda mine: score_examples(
            model, tokenizer, examples=mine, cfg=cfg, seq2seq=seq2seq, progress=state.is_local_main_process
        ),
        examples,
    )
    out_rows = [{"key": e.key, "difficulties": d} for e, d in zip(examples, scored)]
    summary = {
        "rationales": len(out_rows),
        "steps": sum(len(r["difficulties"]) for r in out_rows),
        "used_weights": cfg.difficulty.use_weights,
        "mean_step_difficulty": float(np.mean([d for r in out_rows for d in r["difficulties"]] or [0.0])),
        "zero_token_steps": sum(d == 0.0 for r in out_rows for d in r["difficulties"]),
    }
    if state.is_main_process:
        write_jsonl(paths.difficulties, out_rows)
        write_json(paths.difficulties_summary, summary)
    return summary


def score_examples(
    model, tokenizer, examples: list[DistillExample], cfg: KPODConfig, seq2seq: bool, progress: bool = True
) -> list[list[float]]:
    scored = []
    batch_size = cfg.difficulty.batch_size
    for start in tqdm(range(0, len(examples), batch_size), desc="step difficulty", disable=not progress, leave=False):
        chunk = examples[start : start + batch_size]
        for example, (enc, nll) in zip(chunk, _batch_nll(model, tokenizer, examples=chunk, cfg=cfg, seq2seq=seq2seq)):
            chars = example.weights.char_array(len(example.rationale)) if example.weights else None
            scored.append(
                step_difficulties(
                    nll,
                    enc.target_offsets,
                    in_rationale=enc.in_rationale,
                    steps=example.steps,
                    chars=chars,
                    how=cfg.weighting.overlap,
                )
            )
    return scored


@torch.no_grad()
def _batch_nll(model, tokenizer, examples: list[DistillExample], cfg: KPODConfig, seq2seq: bool):
    encoded = [
        encode_example(
            e,
            0,
            tokenizer=tokenizer,
            seq2seq=seq2seq,
            max_input_tokens=cfg.student.max_input_tokens,
            max_target_tokens=cfg.student.max_target_tokens,
        )
        for e in examples
    ]
    batch = DistillCollator(tokenizer.pad_token_id, seq2seq)(
        [source_target_item(e.source_ids, e.target_ids, seq2seq) for e in encoded]
    )
    device = next(model.parameters()).device
    model.eval()
    labels = batch["labels"].to(device)
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        **({"labels": labels} if seq2seq else {}),
    ).logits
    nll = token_nll(logits, labels, causal=not seq2seq).cpu().numpy()
    out = []
    for row, enc in zip(nll, encoded):
        n = len(enc.target_ids)
        if seq2seq:
            out.append((enc, row[:n]))
        else:
            start = len(enc.source_ids) - 1  # position predicting the first target token
            out.append((enc, row[start : start + n]))
    return out
