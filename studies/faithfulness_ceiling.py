"""How far above the digits-first heuristic can a ranking of rationale tokens get on the deletion test?

References computed with the judge itself on a run's held-out rationales (the run's faithfulness.json
gives the intact NLL and the damages of the module's top 20 %, the heuristic and random deletion):
  saliency           gradient x input of the judge's gold-answer NLL, per token (first-order estimate
                     of the damage of deleting it); the judge grading its own explanation
  digits, then w     digits/operators first, ties broken by the module's w instead of at random
  digits, then sal.  the same with saliency
Prints the mean damage of deleting each one's top 20 %, and its ratio to the heuristic, beside two
deletions without a budget that bound what removing information can do: every digit/operator token,
and the whole rationale (the judge then answers from the question alone). A ranking can only beat
those by deleting so that the rest misleads (e.g. part of a number), not by finding keypoints.

    KPOD_DATA_DIR=../shared/data python studies/faithfulness_ceiling.py studies/out/weight_faithfulness/default-1epoch/seed0
"""

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from kpod.artifacts import RunPaths, rationale_key, read_json, read_rationales
from kpod.rationale import ANSWER_CUE, QUESTION_SEPARATOR
from kpod.weighting.faithfulness import Judge, delete_tokens, heldout_weights, is_digit_or_operator, ranked


def token_saliency(judge: Judge, question: str, rationale: str, answer: str, offsets) -> list[float]:
    """-(dNLL/de . e) summed over the judge's tokens inside each rationale token's characters."""
    tok, model = judge.tokenizer, judge.model
    prefix = question + QUESTION_SEPARATOR
    source = tok(prefix + rationale + ANSWER_CUE, add_special_tokens=False, return_offsets_mapping=True)
    target = tok(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([source["input_ids"] + target])
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings).logits[0]
    n = len(source["input_ids"])
    nll = torch.nn.functional.cross_entropy(logits[n - 1 : -1], torch.tensor(target), reduction="sum")
    (grad,) = torch.autograd.grad(nll, embeddings)
    per_judge_token = (-(grad * embeddings).sum(-1))[0, :n].tolist()
    start = len(prefix)
    scores = []
    for a, b in offsets:
        a, b = start + a, start + b
        scores.append(sum(s for s, (x, y) in zip(per_judge_token, source["offset_mapping"]) if x < b and y > a))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--saliency", action="store_true", help="also the gradient x input rankings (slow)")
    args = parser.parse_args()
    paths = RunPaths(args.run)
    faithfulness = read_json(paths.faithfulness, "run `kpod faithfulness` first")
    recorded = {r["key"]: r for r in faithfulness["per_rationale"]}
    judge = Judge(faithfulness["judge"])
    rationales = {rationale_key(r): r for r in read_rationales(paths.rationales("train"), include_incorrect=True)}
    rng = random.Random(0)
    damages: dict[str, list[float]] = {"top by w": [], "heuristic": [], "random": []}
    for row in heldout_weights(paths, args.limit):
        r, past = rationales[row["key"]], recorded[row["key"]]
        tokens, offsets, w = row["tokens"], row["offsets"], row["weights"]
        k = max(1, round(args.fraction * len(tokens)))
        digit = [1.0 if is_digit_or_operator(t) else 0.0 for t in tokens]
        orders = {"digits, then w": sorted(range(len(tokens)), key=lambda i: (-digit[i], -w[i]))}
        if args.saliency:
            saliency = token_saliency(judge, r["question"], r["rationale"], r["gold"], offsets)
            orders["saliency"] = ranked(saliency, rng)
            orders["digits, then saliency"] = sorted(range(len(tokens)), key=lambda i: (-digit[i], -saliency[i]))
        texts = {name: delete_tokens(r["rationale"], offsets, order[:k]) for name, order in orders.items()}
        texts["every digit/operator (no budget)"] = delete_tokens(
            r["rationale"], offsets, [i for i in range(len(tokens)) if digit[i]]
        )
        texts["whole rationale (no budget)"] = ""
        nll = judge.answer_nll([(r["question"], t, r["gold"]) for t in texts.values()])
        for name, value in zip(texts, nll):
            damages.setdefault(name, []).append(value - past["nll_intact"])
        for name, key in (("top by w", "damage_top"), ("heuristic", "damage_heuristic"), ("random", "damage_random")):
            damages[name].append(past[key])
    heuristic = statistics.mean(damages["heuristic"])
    result = {}
    print(f"{args.run}: {len(damages['heuristic'])} held-out rationales, top {100 * args.fraction:.0f} % deleted")
    print("| ranking | damage (nats) | sem | / heuristic | / random |\n|---|---|---|---|---|")
    for name, values in damages.items():
        mean, sem = statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5
        result[name] = {"damage": mean, "sem": sem, "vs_heuristic": mean / heuristic}
        print(
            f"| {name} | {mean:.2f} | {sem:.2f} | {mean / heuristic:.2f} | {mean / statistics.mean(damages['random']):.2f} |"
        )
    (args.run / "faithfulness_ceiling.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
