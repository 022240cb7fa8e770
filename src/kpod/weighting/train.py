"""Recipe: train the weighting module on the training rationales, export w for every rationale."""

from __future__ import annotations

import hashlib
import logging
import time

import torch
from tqdm.auto import tqdm

from kpod import placement
from kpod.artifacts import RunPaths, rationale_key, read_json, read_jsonl, read_rationales, write_json, write_jsonl
from kpod.config import KPODConfig, load_config
from kpod.files import DataError
from kpod.models import add_lora, is_seq2seq, load_model, load_tokenizer
from kpod.weighting.data import PrefixCollator, WeightingItem
from kpod.weighting.module import KeypointModel, TokenWeighter

log = logging.getLogger(__name__)


def build_keypoint_model(cfg: KPODConfig, student_name: str | None = None):
    """(KeypointModel, student tokenizer, reasoner tokenizer) as configured."""
    w = cfg.weighting
    student_name = student_name or cfg.student.model
    reasoner_name = w.reasoner or student_name
    student_tokenizer, reasoner_tokenizer = load_tokenizer(student_name), load_tokenizer(reasoner_name)
    if w.reasoner_input == "reasoner_tokens" and student_tokenizer.get_vocab() != reasoner_tokenizer.get_vocab():
        raise ValueError(
            f"weighting.reasoner_input=reasoner_tokens needs the student's tokenizer, but the reasoner "
            f"{reasoner_name} has another: set weighting.reasoner_input=token and weighting.reasoner_warmup_epochs>0"
        )
    student = load_model(student_name, "float32", placed=False)  # only its embedding table is read
    embeddings = student.get_input_embeddings().weight.detach().float().clone()
    del student
    trained_whole = not w.reasoner_lora and not (w.freeze_reasoner and w.reasoner_warmup_epochs == 0)
    reasoner = load_model(reasoner_name, cfg.student.dtype, trained_whole=trained_whole)
    if w.reasoner_lora:
        reasoner = add_lora(
            reasoner,
            r=cfg.student.lora_r,
            alpha=cfg.student.lora_alpha,
            dropout=cfg.student.lora_dropout,
            target_modules=cfg.student.target_modules,
        )
    if w.gradient_checkpointing and not (w.freeze_reasoner and w.reasoner_warmup_epochs == 0):
        reasoner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    weighter = TokenWeighter(
        embeddings,
        w.attention_heads,
        mlp_hidden=w.mlp_hidden,
        positions=w.positions,
        keep_rate=w.keep_rate,
        head_init=w.head_init,
    )
    model = KeypointModel(
        weighter,
        reasoner,
        alpha=w.alpha,
        tau=w.gumbel_tau,
        mask_loss=w.mask_loss,
        reasoner_input=w.reasoner_input,
        estimator=w.estimator,
        samples=w.samples,
        masking=w.masking,
    )
    return model.to(placement.device()), student_tokenizer, reasoner_tokenizer


def fit_keypoint_model(
    model: KeypointModel,
    collator: PrefixCollator,
    items: list[WeightingItem],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    warmup_epochs: int = 0,
    freeze_reasoner: bool = True,
    reasoner_lr: float | None = None,
    precision: str | None = None,
) -> list[dict]:
    """Train the module. The first `warmup_epochs` train only the reasoner side (reasoner, P, v_mask)
    on randomly masked rationales, so that L_p can tell needed tokens from filler once the learned
    masks start; with `freeze_reasoner` the reasoner side is fixed from then on.

    The weighter and the reasoner side are clipped separately (max norm 1 each), so neither's
    gradient can shrink the other's update. Batches go to the model's device; the forward runs under
    autocast to kpod.placement's low precision for `precision` (student.dtype), if any."""
    torch.manual_seed(seed)
    weighter_params = [p for p in model.weighter.parameters() if p.requires_grad]
    reasoner_params = model.reasoner_side_parameters()
    optimizer = torch.optim.AdamW(
        [{"params": weighter_params}, {"params": reasoner_params, "lr": reasoner_lr or lr}], lr=lr
    )
    generator = torch.Generator().manual_seed(seed)
    where = next(model.parameters()).device
    history = []
    model.train()
    for epoch in range(warmup_epochs + epochs):
        warming = epoch < warmup_epochs
        if not warming and freeze_reasoner:
            model.freeze_reasoner_side()
        order = torch.randperm(len(items), generator=generator).tolist()
        totals = {"objective": 0.0, "answer_loss": 0.0, "mask_loss": 0.0, "mean_w": 0.0}
        batches = range(0, len(order), batch_size)
        label = (
            f"reasoner warm-up {epoch + 1}/{warmup_epochs}"
            if warming
            else f"token weighting epoch {epoch + 1 - warmup_epochs}/{epochs}"
        )
        bar = tqdm(batches, desc=label, disable=not progress, leave=False)
        for start in bar:
            batch = placement.to_device(collator([items[i] for i in order[start : start + batch_size]]), where)
            with placement.autocast(precision):
                out = model(batch, warmup=warming)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            for group in (weighter_params, reasoner_params):
                trainable = [p for p in group if p.grad is not None]
                if trainable:
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
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
def export_weights(
    model: KeypointModel, collator: PrefixCollator, items: list[WeightingItem], batch_size: int = 16
) -> list[dict]:
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
        where = next(model.parameters()).device
        weights = model.token_weights(tensor.to(where), mask.to(where)).float().cpu().tolist()
        for item, (token_ids, offsets), w in zip(chunk, encoded, weights):
            rows.append(
                {
                    "key": item.key,
                    "tokens": collator.student_tokenizer.convert_ids_to_tokens(token_ids),
                    "offsets": [list(o) for o in offsets],
                    "weights": [round(float(x), 5) for x in w[: len(token_ids)]],
                }
            )
    return rows


def load_weighting_module(run_dir) -> tuple[KeypointModel, PrefixCollator]:
    """A run's trained weighting module (weights/module.pt, on the student it was trained for) and its
    collator, to weigh rationales it never saw: `export_weights(model, collator, items)`."""
    paths = RunPaths(run_dir)
    saved = torch.load(paths.weighting_module, map_location="cpu", weights_only=True)
    cfg = load_config(paths.config_snapshot("train_token_weighting"), {"output_dir": str(paths.root)})
    model, student_tok, reasoner_tok = build_keypoint_model(cfg, saved["student"])
    missing, unexpected = model.load_state_dict(saved["state_dict"], strict=False)
    if unexpected or any(not k.startswith(("reasoner.", "weighter.embed.")) for k in missing):
        raise ValueError(f"{paths.weighting_module} does not fit this module ({unexpected or missing})")
    return model.eval(), prefix_collator(cfg, model, student_tok, reasoner_tok)


def prefix_collator(cfg: KPODConfig, model: KeypointModel, student_tok, reasoner_tok) -> PrefixCollator:
    w = cfg.weighting
    return PrefixCollator(
        student_tok,
        reasoner_tok,
        reasoner_seq2seq=is_seq2seq(model.reasoner),
        prefixes=w.prefixes,
        max_rationale_tokens=w.max_rationale_tokens,
        max_question_tokens=w.max_question_tokens,
        seed=cfg.seed,
    )


def check_quality(cfg: KPODConfig, paths: RunPaths, weights: list[dict], rows: list[dict], keys: list[str]) -> dict:
    """The deletion test of the new weights on the held-out rationales (weights/quality.json); one line
    logged, a warning when the top by w does no better than random deletions."""
    from kpod.weighting.faithfulness import weights_quality

    chosen = set(sorted(keys)[: cfg.weighting.quality_rationales])
    held = [r for r in weights if r["key"] in chosen and r["tokens"]]
    quality = weights_quality(held, {rationale_key(r): r for r in rows}, cfg.student.model, dtype=cfg.student.dtype)
    write_json(paths.weights_quality, quality)
    log.info(quality["line"])
    if quality["verdict"] == "no better than random":
        log.warning(
            "the token weights are no better than random on %d held-out rationales: deleting the top by w did no "
            "more damage than deleting at random (weights/quality.json). Train the module longer "
            "(weighting.epochs), with more mask samples (weighting.samples) or on more rationales, or lower "
            "weighting.learning_rate; kpod show_weights %s shows what it learned",
            quality["rationales"],
            paths.root,
        )
    return quality


def check_run_weights(run_dir) -> dict:
    """The stage's own check (weights/quality.json) run afterwards on a run folder whose weighting stage
    ran without it (weighting.quality_check=false), with that stage's settings."""
    paths = RunPaths(run_dir)
    snapshot = paths.config_snapshot("train_token_weighting")
    if not snapshot.is_file() or not paths.weights.is_file():
        raise DataError(f"{paths.root}: no weighting stage here ({snapshot} or {paths.weights} missing)")
    keys = read_json(paths.weights_heldout)["keys"] if paths.weights_heldout.is_file() else []
    if not keys:
        raise DataError(f"{paths.root}: no held-out rationales to check on; rerun the stage with weighting.holdout > 0")
    cfg = load_config(snapshot)
    rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    return check_quality(cfg, paths, read_jsonl(paths.weights), rows, keys)


def held_out_questions(question_ids: list[str], holdout: float) -> set[str]:
    """Questions whose rationales the module does not train on (a fraction below 1, else a count).
    Chosen by a hash of the id, not by the seed, so runs with different seeds hold out the same ones."""
    unique = sorted(set(question_ids), key=lambda q: hashlib.sha256(q.encode()).hexdigest())
    count = int(round(holdout * len(unique))) if holdout < 1 else int(holdout)
    count = min(count, max(0, len(unique) - 1))  # always leave something to train on
    return set(unique[:count])


def train_weighting(cfg: KPODConfig) -> dict:
    """The train_token_weighting stage: fit the keypoint model on the run's rationales (holding some out)
    and write every rationale's token weights (weights/weights.jsonl, heldout.json, module.pt, summary)."""
    paths = RunPaths(cfg.run_dir)
    all_rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    usable = [r for r in all_rows if cfg.train.include_incorrect or r.get("correct", True)]
    w = cfg.weighting
    held_out = held_out_questions([str(r["id"]) for r in usable], w.holdout)
    train_rows = [r for r in usable if str(r["id"]) not in held_out]

    def to_items(rows):
        return [
            WeightingItem(rationale_key(r), r["rationale"], steps=r["steps"], question=r["question"], answer=r["gold"])
            for r in rows
        ]

    torch.manual_seed(cfg.seed)
    model, student_tok, reasoner_tok = build_keypoint_model(cfg)
    collator = prefix_collator(cfg, model, student_tok, reasoner_tok)
    start = time.time()
    history = fit_keypoint_model(
        model,
        collator,
        to_items(train_rows),
        epochs=w.epochs,
        lr=w.learning_rate,
        batch_size=w.batch_size,
        seed=cfg.seed,
        warmup_epochs=w.reasoner_warmup_epochs,
        freeze_reasoner=w.freeze_reasoner,
        reasoner_lr=w.reasoner_learning_rate if w.reasoner_warmup_epochs or not w.freeze_reasoner else None,
        precision=cfg.student.dtype,
    )
    seconds = time.time() - start
    rows = export_weights(model, collator, to_items(all_rows))
    write_jsonl(paths.weights, rows)
    state = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith(("reasoner.", "weighter.embed."))}
    torch.save(
        {"state_dict": state, "config": cfg.value_at("weighting"), "student": cfg.student.model}, paths.weighting_module
    )
    held_out_keys = [rationale_key(r) for r in usable if str(r["id"]) in held_out]
    write_json(paths.weights_heldout, {"questions": sorted(held_out), "keys": held_out_keys})
    del model
    paths.weights_quality.unlink(missing_ok=True)
    quality = check_quality(cfg, paths, rows, usable, held_out_keys) if w.quality_check and held_out_keys else None
    mean_w = sum(sum(r["weights"]) for r in rows) / max(1, sum(len(r["weights"]) for r in rows))
    summary = {
        "rationales": len(rows),
        "trained_on": len(train_rows),
        "held_out": len(held_out_keys),
        "epochs": w.epochs,
        "seconds": seconds,
        "mean_weight": mean_w,
        "history": history,
        "keypoints": quality and quality["line"],
    }
    write_json(paths.weights_summary, summary)
    return summary
