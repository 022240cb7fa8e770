"""Keypoint diagnostic: does the weighting module find the tokens the answer depends on?

Synthetic rationales hide a computation `a + b` or `a - b` (single digits) among filler words;
the answer is `a` after `+` and `b` after `-`, and the question says nothing, so the answer
depends only on the two numbers and the operator (a selection a tiny reasoner learns quickly). After
training, the module's weights should rank those tokens above the filler: we report the ROC AUC.
Runs with tiny randomly initialised models on a CPU in a few minutes:

    python -m kpod.weighting.diagnostic --tokenizer ../shared/data/tokenizers/llama
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

from kpod.student.load import load_model, load_tokenizer
from kpod.student.tiny import build_tiny_model
from kpod.weighting.data import PrefixCollator, WeightingItem
from kpod.weighting.module import KeypointModel, TokenWeighter
from kpod.weighting.train import export_weights, fit_keypoint_model

FILLER = ("we", "note", "that", "it", "is", "clear", "so", "and", "also", "here", "look", "again", "some", "words",
          "then", "first", "next", "well", "okay", "now")


def synthetic_items(n: int, seed: int = 0) -> list[WeightingItem]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice("+-")
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 12))]
        where = rng.randint(0, len(words))
        words[where:where] = [str(a), op, str(b)]
        text = " ".join(words) + "."
        items.append(WeightingItem(f"synthetic-{i}", text, [text], "Compute the hidden result.", str(a if op == "+" else b)))
    return items


def needed_token(token: str) -> bool | None:
    """True for tokens of the computation, False for filler words, None for pieces of neither."""
    text = token.replace("▁", "").replace("Ġ", "").strip()
    if not text or text == ".":
        return None
    if any(c.isdigit() for c in text) or text in "+-":
        return True
    return False


def run_keypoint_diagnostic(tokenizer_dir: str | Path, n: int = 2000, epochs: int = 3, alpha: float = 0.5,
                            seed: int = 0, progress: bool = True, work_dir: str | Path | None = None,
                            warmup_epochs: int = 5, reasoner_input: str = "contextual") -> dict:
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model("llama", tokenizer_dir, Path(work_dir or tmp) / "tiny-reasoner", hidden=64, layers=2, seed=seed)
        tokenizer = load_tokenizer(str(folder))
        reasoner = load_model(str(folder))
        embeddings = reasoner.get_input_embeddings().weight.detach().clone()
        model = KeypointModel(TokenWeighter(embeddings, heads=4, mlp_hidden=64), reasoner, alpha=alpha,
                              reasoner_input=reasoner_input)
        collator = PrefixCollator(tokenizer, tokenizer, False, "steps", 64, 16, seed)
        items = synthetic_items(n, seed)
        # the reasoner is random, so it first learns the task on (almost) unmasked rationales
        history = fit_keypoint_model(model, collator, items, epochs, 3e-3, 16, seed, progress, warmup_epochs=warmup_epochs)
        held_out = synthetic_items(200, seed + 1)
        rows = export_weights(model, collator, held_out)
    labels, scores = [], []
    for row in rows:
        for token, w in zip(row["tokens"], row["weights"]):
            need = needed_token(token)
            if need is not None:
                labels.append(int(need))
                scores.append(w)
    needed = [s for s, l in zip(scores, labels) if l]
    filler = [s for s, l in zip(scores, labels) if not l]
    return {"roc_auc": float(roc_auc_score(labels, scores)), "mean_w_needed": sum(needed) / len(needed),
            "mean_w_filler": sum(filler) / len(filler), "mean_w": sum(scores) / len(scores), "alpha": alpha,
            "train_rationales": n, "epochs": epochs, "warmup_epochs": warmup_epochs, "reasoner_input": reasoner_input,
            "answer_loss_after_warmup": history[warmup_epochs - 1]["answer_loss"] if warmup_epochs else None,
            "final_answer_loss": history[-1]["answer_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder of a LLaMA-family tokenizer")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--reasoner-input", default="contextual", choices=["contextual", "token"])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run_keypoint_diagnostic(args.tokenizer, args.n, args.epochs, args.alpha, args.seed,
                                             warmup_epochs=args.warmup_epochs, reasoner_input=args.reasoner_input), indent=1))


if __name__ == "__main__":
    main()
