"""Keypoint diagnostic: does the weighting module find the tokens the answer depends on?

Synthetic rationales hide a computation `a + b` or `a - b` (single digits) among filler words;
the answer is `a` after `+` and `b` after `-`, and the question says nothing, so the answer
depends only on the operator and the operand it selects (a computation a tiny reasoner learns
quickly). After training, the module's weights should rank those tokens above the filler: we report
the ROC AUC (the unselected operand is left out of it; its mean weight is reported on its own).
Runs with tiny randomly initialised models on a CPU in about two minutes:

    python -m kpod.weighting.diagnostic --tokenizer ../shared/data/tokenizers/llama
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from kpod.models import load_model, load_tokenizer
from kpod.testing import build_tiny_model
from kpod.weighting.data import PrefixCollator, WeightingItem
from kpod.weighting.module import ESTIMATORS, KeypointModel, TokenWeighter
from kpod.weighting.train import export_weights, fit_keypoint_model

FILLER = (
    "we",
    "note",
    "that",
    "it",
    "is",
    "clear",
    "so",
    "and",
    "also",
    "here",
    "look",
    "again",
    "some",
    "words",
    "then",
    "first",
    "next",
    "well",
    "okay",
    "now",
)


def synthetic_items(n: int, seed: int = 0) -> list[WeightingItem]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice("+-")
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 12))]
        where = rng.randint(0, len(words))
        words[where:where] = [str(a), op, str(b)]
        text = " ".join(words) + "."
        items.append(
            WeightingItem(
                f"synthetic-{i}",
                text,
                steps=[text],
                question="Compute the hidden result.",
                answer=str(a if op == "+" else b),
            )
        )
    return items


def token_roles(tokens: list[str], answer: str) -> list[str | None]:
    """'needed' (the operator and the operand it selects), 'other' (the unselected operand),
    'filler', or None (pieces of neither, such as a bare space or the full stop)."""
    texts = [t.replace("▁", "").replace("Ġ", "").strip() for t in tokens]
    op = next(i for i, t in enumerate(texts) if t in ("+", "-"))
    digits = [i for i, t in enumerate(texts) if t.isdigit()]
    before, after = max(i for i in digits if i < op), min(i for i in digits if i > op)
    selected = before if texts[op] == "+" else after
    assert texts[selected] == answer, (tokens, answer)
    roles = []
    for i, text in enumerate(texts):
        if i in (op, selected):
            roles.append("needed")
        elif i in (before, after):
            roles.append("other")
        else:
            roles.append("filler" if text and text != "." else None)
    return roles


def run_keypoint_diagnostic(
    tokenizer_dir: str | Path,
    n: int = 1000,
    epochs: int = 4,
    alpha: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    work_dir: str | Path | None = None,
    warmup_epochs: int = 8,
    learning_rate: float = 1e-3,
    freeze_reasoner: bool = True,
    keep_rate: float | None = 0.8,
    positions: str = "from_end",
    **module_options,
) -> dict:
    """Train the module on n synthetic rationales, return the ROC AUC of its weights on 200 new ones.
    module_options: KeypointModel keywords (estimator, masking, reasoner_input, samples); defaults
    as the weighting config's."""
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(
            "llama", tokenizer_dir, Path(work_dir or tmp) / f"tiny-reasoner-{seed}", hidden=128, layers=2, seed=seed
        )
        tokenizer = load_tokenizer(str(folder))
        reasoner = load_model(str(folder), "float32", placed=False)  # a tiny synthetic check, on the CPU
        embeddings = reasoner.get_input_embeddings().weight.detach().clone()
        model = KeypointModel(
            TokenWeighter(embeddings, heads=4, mlp_hidden=64, keep_rate=keep_rate, positions=positions),
            reasoner,
            alpha=alpha,
            **module_options,
        )
        collator = PrefixCollator(
            tokenizer,
            tokenizer,
            reasoner_seq2seq=False,
            prefixes="steps",
            max_rationale_tokens=64,
            max_question_tokens=16,
            seed=seed,
        )
        items = synthetic_items(n, seed)
        # the reasoner is random, so it first learns the task on (almost) unmasked rationales
        history = fit_keypoint_model(
            model,
            collator,
            items,
            epochs=epochs,
            lr=learning_rate,
            batch_size=16,
            seed=seed,
            progress=progress,
            warmup_epochs=warmup_epochs,
            freeze_reasoner=freeze_reasoner,
        )
        held_out = synthetic_items(200, seed + 1)
        rows = export_weights(model, collator, held_out)
    by_role = {"needed": [], "other": [], "filler": []}
    for row, item in zip(rows, held_out):
        for role, w in zip(token_roles(row["tokens"], item.answer), row["weights"]):
            if role:
                by_role[role].append(w)
    labels = [1] * len(by_role["needed"]) + [0] * len(by_role["filler"])

    def mean(xs):
        return sum(xs) / len(xs)

    every = [w for ws in by_role.values() for w in ws]
    return {
        "roc_auc": float(roc_auc_score(labels, by_role["needed"] + by_role["filler"])),
        "mean_w_needed": mean(by_role["needed"]),
        "mean_w_unselected_operand": mean(by_role["other"]),
        "mean_w_filler": mean(by_role["filler"]),
        "mean_w": mean(every),
        "alpha": alpha,
        "keep_rate": keep_rate,
        "positions": positions,
        "train_rationales": n,
        "epochs": epochs,
        "warmup_epochs": warmup_epochs,
        "freeze_reasoner": freeze_reasoner,
        "estimator": model.estimator,
        "masking": model.masking,
        "reasoner_input": model.reasoner_input,
        "answer_loss_after_warmup": history[warmup_epochs - 1]["answer_loss"] if warmup_epochs else None,
        "final_answer_loss": history[-1]["answer_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder of a LLaMA-family tokenizer")
    parser.add_argument("--n", type=int, default=1000, help="synthetic training rationales")
    parser.add_argument("--epochs", type=int, default=4, help="masked epochs (after the warm-up)")
    parser.add_argument("--warmup-epochs", type=int, default=8, help="epochs teaching the random reasoner the task")
    parser.add_argument("--estimator", default="score_function", choices=sorted(ESTIMATORS))
    parser.add_argument("--masking", default="delete", choices=["delete", "embedding"])
    parser.add_argument(
        "--reasoner-input", default="reasoner_tokens", choices=["reasoner_tokens", "contextual", "token"]
    )
    parser.add_argument("--joint", action="store_true", help="keep training the reasoner after its warm-up")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run_keypoint_diagnostic(
        args.tokenizer,
        args.n,
        epochs=args.epochs,
        alpha=args.alpha,
        seed=args.seed,
        warmup_epochs=args.warmup_epochs,
        learning_rate=args.lr,
        freeze_reasoner=not args.joint,
        estimator=args.estimator,
        masking=args.masking,
        reasoner_input=args.reasoner_input,
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
