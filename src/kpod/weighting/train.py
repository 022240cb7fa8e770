"""Recipe: train the weighting module on the training rationales, export w for every rationale."""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from kpod.artifacts import RunPaths, read_rationales, rationale_key, write_json, write_jsonl
from kpod.config import KPODConfig
from kpod.student.load import add_lora, is_seq2seq, load_model, load_tokenizer
from kpod.weighting.data import PrefixCollator, WeightingItem
from kpod.weighting.module import KeypointModel, TokenWeighter

log = logging.getLogger(__name__)


def build_keypoint_model(cfg: KPODConfig, student_name: str | None = None):
    """(KeypointModel, student tokenizer, reasoner tokenizer) as configured."""
    w = cfg.weighting
    student_name = student_name or cfg.student.model
    student = load_model(student_name)
    embeddings = student.get_input_embeddings().weight.detach().float().clone()
    del student
    reasoner_name = w.reasoner or student_name
    reasoner = load_model(reasoner_name)
    if w.reasoner_lora:
        reasoner = add_lora(reasoner, cfg.student.lora_r, cfg.student.lora_alpha, cfg.student.lora_dropout,
                            cfg.student.target_modules)
    if w.gradient_checkpointing:
        reasoner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    weighter = TokenWeighter(embeddings, w.attention_heads, w.mlp_hidden)
    model = KeypointModel(weighter, reasoner, w.alpha, w.gumbel_tau, w.mask_loss, w.reasoner_input, w.score_function)
    return model, load_tokenizer(student_name), load_tokenizer(reasoner_name)


def fit_keypoint_model(model: KeypointModel, collator: PrefixCollator, items: list[WeightingItem], epochs: int,
                       lr: float, batch_size: int, seed: int = 0, progress: bool = True, warmup_epochs: int = 0) -> list[dict]:
    """Train jointly; the first `warmup_epochs` train the reasoner (and projection) on unmasked
    rationales, so that L_p can tell needed tokens from filler once masking starts."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for epoch in range(warmup_epochs + epochs):
        warming = epoch < warmup_epochs
        order = torch.randperm(len(items), generator=generator).tolist()
        totals = {"objective": 0.0, "answer_loss": 0.0, "mask_loss": 0.0, "mean_w": 0.0}
        batches = range(0, len(order), batch_size)
        label = f"reasoner warm-up {epoch + 1}/{warmup_epochs}" if warming else f"token weighting epoch {epoch + 1 - warmup_epochs}/{epochs}"
        bar = tqdm(batches, desc=label, disable=not progress, leave=False)
        for start in bar:
            batch = collator([items[i] for i in order[start : start + batch_size]])
            out = model(batch, keep_all=warming)
            optimizer.zero_grad()
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            valid = batch["rationale_mask"].bool()
            for key in ("objective", "answer_loss", "mask_loss"):
                totals[key] += out[key].item()
            totals["mean_w"] += out["w"][valid].mean().item()
            bar.set_postfix(objective=f"{out['objective'].item():.3f}", kept=f"{out['mask_loss'].item():.2f}")
        n = max(1, len(batches))
        history.append({"epoch": epoch + 1, "warmup": warming, **{k: v / n for k, v in totals.items()}})
        log.info("token weighting epoch %d: %s", epoch + 1, history[-1])
    return history


@torch.no_grad()
def export_weights(model: KeypointModel, collator: PrefixCollator, items: list[WeightingItem], batch_size: int = 16) -> list[dict]:
    model.eval()
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        encoded = [collator.rationale_tokens(i.rationale) for i in chunk]
        ids = [e[0] for e in encoded]
        longest = max(1, max(len(x) for x in ids))
        pad = collator.student_tokenizer.pad_token_id
        tensor = torch.tensor([x + [pad] * (longest - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (longest - len(x)) for x in ids])
        weights = model.token_weights(tensor, mask)
        for item, (token_ids, offsets), w in zip(chunk, encoded, weights):
            rows.append({"key": item.key, "tokens": collator.student_tokenizer.convert_ids_to_tokens(token_ids),
                         "offsets": [list(o) for o in offsets], "weights": [round(float(x), 5) for x in w[: len(token_ids)]]})
    return rows


def train_weighting(cfg: KPODConfig) -> dict:
    paths = RunPaths(cfg.run_dir)
    all_rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    train_rows = [r for r in all_rows if cfg.train.include_incorrect or r.get("correct", True)]
    to_items = lambda rows: [WeightingItem(rationale_key(r), r["rationale"], r["steps"], r["question"], r["gold"]) for r in rows]
    model, student_tok, reasoner_tok = build_keypoint_model(cfg)
    w = cfg.weighting
    collator = PrefixCollator(student_tok, reasoner_tok, is_seq2seq(model.reasoner), w.prefixes, w.max_rationale_tokens,
                              w.max_question_tokens, cfg.seed)
    start = time.time()
    history = fit_keypoint_model(model, collator, to_items(train_rows), w.epochs, w.learning_rate, w.batch_size, cfg.seed,
                                 warmup_epochs=w.reasoner_warmup_epochs)
    seconds = time.time() - start
    rows = export_weights(model, collator, to_items(all_rows))
    write_jsonl(paths.weights, rows)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("reasoner.", "weighter.embed."))}
    torch.save({"state_dict": state, "config": w.model_dump(mode="json"), "student": cfg.student.model}, paths.weighting_module)
    mean_w = sum(sum(r["weights"]) for r in rows) / max(1, sum(len(r["weights"]) for r in rows))
    summary = {"rationales": len(rows), "trained_on": len(train_rows), "epochs": w.epochs, "seconds": seconds,
               "mean_weight": mean_w, "history": history}
    write_json(paths.root / "weights" / "summary.json", summary)
    return summary
