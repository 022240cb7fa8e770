"""Are the token weights faithful? A deletion test on rationales the module never trained on.

For each held-out rationale, delete (remove the characters of) the top `fraction` of its tokens by
w, the bottom `fraction`, a random `fraction` (several draws), and the top `fraction` of a one-line
heuristic (tokens with a digit or one of + - * / = first, ties at random), and measure how much a
frozen judge's negative log-likelihood of the gold answer rises ("damage") over the intact rationale.
Faithful weights: top-q damage far above random and above the heuristic, bottom-q damage far below.

    kpod faithfulness RUN [--fraction 0.2] [--draws 3] [--judge MODEL]

The judge (default: the pretrained student) reads `question \\n rationale Therefore, the answer is`
and scores the gold answer, the layout the weighting module's reasoner reads.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kpod import placement
from kpod.artifacts import RunPaths, rationale_key, read_json, read_rationales, write_json
from kpod.files import DataError, read_jsonl
from kpod.layout import DistillCollator, source_target_item, token_nll
from kpod.models import is_seq2seq, load_model, load_tokenizer
from kpod.rationale import ANSWER_CUE, QUESTION_SEPARATOR
from kpod.stage_records import require_fresh

VARIANTS = ("top", "bottom", "heuristic", "random")


def is_digit_or_operator(token: str) -> bool:
    return any(c.isdigit() or c in "+-*/=" for c in token)


def ranked(scores: list[float], rng: random.Random) -> list[int]:
    """Token indices from the highest score to the lowest; ties in random order."""
    jitter = [rng.random() for _ in scores]
    return sorted(range(len(scores)), key=lambda i: (-scores[i], jitter[i]))


def delete_tokens(text: str, offsets: list[list[int]], indices) -> str:
    """The text without the characters of the chosen tokens."""
    drop = [False] * len(text)
    for i in indices:
        start, end = offsets[i]
        drop[start:end] = [True] * (end - start)
    return "".join(c for c, gone in zip(text, drop) if not gone)


class Judge:
    """A frozen model that scores the gold answer after [question; rationale; answer cue]."""

    def __init__(self, name: str, batch_size: int = 8, dtype: str | None = None):
        self.name = name
        self.tokenizer = load_tokenizer(name)
        self.model = load_model(name, dtype).eval()
        self.seq2seq = is_seq2seq(self.model)
        self.batch_size = batch_size
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _encode(self, question: str, rationale: str, answer: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        source = tok(question + QUESTION_SEPARATOR + rationale + ANSWER_CUE, add_special_tokens=self.seq2seq)[
            "input_ids"
        ]
        if self.seq2seq:
            return source, tok(answer)["input_ids"]
        return source, tok(" " + answer, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def answer_nll(self, rows: list[tuple[str, str, str]]) -> list[float]:
        """Summed NLL of each row's answer tokens; rows: (question, rationale, answer)."""
        out = []
        for start in range(0, len(rows), self.batch_size):
            encoded = [self._encode(*row) for row in rows[start : start + self.batch_size]]
            out.extend((self._seq2seq_nll if self.seq2seq else self._causal_nll)(encoded).cpu().tolist())
        return out

    def _seq2seq_nll(self, encoded: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        batch = DistillCollator(self.pad_id, seq2seq=True)([source_target_item(*pair, True) for pair in encoded])
        batch = placement.to_device(batch, self.model.device)
        logits = self.model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).logits
        return token_nll(logits, batch["labels"], causal=False).sum(1)

    def _causal_nll(self, encoded: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Left padding ends every row with its answer, so the vocabulary logits are needed at the last
        A + 1 positions only (A: the longest answer); every position's took 1.44x the time (bench/judge_cost.py)."""
        length = max(len(s) + len(a) for s, a in encoded)
        answer_length = max(len(a) for _, a in encoded)
        ids, mask, labels = [], [], []
        for source, answer in encoded:
            gap = length - len(source) - len(answer)
            ids.append([self.pad_id] * gap + source + answer)
            mask.append([0] * gap + [1] * (length - gap))
            labels.append([-100] * (answer_length - len(answer)) + answer)
        ids = torch.tensor(ids, device=self.model.device)
        mask = torch.tensor(mask, device=ids.device)
        position_ids = (mask.cumsum(1) - 1).clamp_min(0)
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=answer_length + 1
        ).logits[:, :-1]
        targets = torch.tensor(labels, device=ids.device)
        return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none").sum(1)


def deletion_texts(
    rationale: str,
    tokens: list[str],
    offsets: list[list[int]],
    weights: list[float],
    fraction: float,
    draws: int,
    rng: random.Random,
) -> dict[str, list[str]]:
    """The rationale with each variant's tokens deleted (a list per variant: several random draws)."""
    n = len(tokens)
    k = max(1, round(fraction * n))
    by_weight = ranked(weights, rng)
    heuristic = ranked([1.0 if is_digit_or_operator(t) else 0.0 for t in tokens], rng)
    return {
        "top": [delete_tokens(rationale, offsets, by_weight[:k])],
        "bottom": [delete_tokens(rationale, offsets, by_weight[-k:])],
        "heuristic": [delete_tokens(rationale, offsets, heuristic[:k])],
        "random": [delete_tokens(rationale, offsets, rng.sample(range(n), k)) for _ in range(draws)],
    }


def weight_auc(rows: list[dict]) -> float | None:
    """ROC AUC of w for tokens with a digit or operator against the rest (secondary figure)."""
    from sklearn.metrics import roc_auc_score

    labels = [is_digit_or_operator(t) for r in rows for t in r["tokens"]]
    scores = [w for r in rows for w in r["weights"]]
    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None


def measure_faithfulness(
    run_dir: str | Path,
    *,
    fraction: float = 0.2,
    draws: int = 3,
    judge: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    judge_cache: dict | None = None,
    out: str | Path | None = None,
    dtype: str | None = None,
) -> dict:
    """Deletion test of a run's token weights on its held-out rationales; writes weights/faithfulness.json
    (the report's table), or `out` (e.g. the test at another fraction, beside it).
    judge_cache: (question, rationale, answer) -> NLL, shared between runs with the same judge (the
    intact, random and heuristic texts do not depend on the weights, so several seeds score them once)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    paths = RunPaths(run_dir)
    require_fresh(paths.root, "train_token_weighting")
    rationales = {rationale_key(r): r for r in read_rationales(paths.rationales("train"), include_incorrect=True)}
    result = deletion_test(
        heldout_weights(paths, limit),
        rationales,
        judge or _student_of(paths),
        fraction=fraction,
        draws=draws,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        judge_cache=judge_cache,
        dtype=dtype,
    )
    write_json(Path(out) if out else paths.faithfulness, result)
    return result


def deletion_test(
    weights: list[dict],
    rationales: dict[str, dict],
    judge: str | Judge,
    *,
    fraction: float = 0.2,
    draws: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    judge_cache: dict | None = None,
    dtype: str | None = None,
) -> dict:
    """The deletion test of any token weights (rows of weights.jsonl's form: key, tokens, offsets, weights)
    on their rationales (rationale rows by key: question, rationale, gold), judged by `judge` (a model
    name, or a loaded Judge to score several tests with one model)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    scorer = judge if isinstance(judge, Judge) else Judge(judge, batch_size, dtype)
    rng = random.Random(seed)
    per_rationale = [
        _deletion_damages(
            scorer, rationales[row["key"]], row, fraction=fraction, draws=draws, rng=rng, cache=judge_cache
        )
        for row in tqdm(weights, desc="faithfulness", disable=not progress)
    ]
    result = summarize_damages(per_rationale)
    result.update({"judge": scorer.name, "fraction": fraction, "random_draws": draws})
    result["auc_digits_operators"] = weight_auc(weights)
    result["per_rationale"] = per_rationale
    return result


def heldout_weights(paths: RunPaths, limit: int | None = None) -> list[dict]:
    """The stored token weights of the rationales the weighting module did not train on."""
    heldout = set(
        read_json(
            paths.weights_heldout,
            "no held-out rationales recorded: rerun `kpod train_token_weighting` with weighting.holdout > 0",
            ("keys",),
        )["keys"]
    )
    if not heldout:
        raise DataError(
            f"{paths.weights_heldout}: no rationale was held out (weighting.holdout is 0); re-run "
            "`kpod train_token_weighting` with weighting.holdout > 0"
        )
    weights = [row for row in read_jsonl(paths.weights) if row["key"] in heldout and row["tokens"]]
    return weights[:limit] if limit else weights


def _deletion_damages(judge: Judge, rationale: dict, row: dict, *, fraction, draws, rng, cache) -> dict:
    """One rationale: the judge's NLL of the gold answer intact, and its rise under each deletion."""
    text = rationale["rationale"]  # the stored tokens may stop short of it (truncated): only those are candidates
    texts = deletion_texts(
        text, row["tokens"], offsets=row["offsets"], weights=row["weights"], fraction=fraction, draws=draws, rng=rng
    )
    flat = [text] + [t for v in VARIANTS for t in texts[v]]
    nll = _cached_nll(judge, [(rationale["question"], t, rationale["gold"]) for t in flat], cache)
    base, rest = nll[0], nll[1:]
    record = {"key": row["key"], "nll_intact": base}
    for v in VARIANTS:
        values, rest = rest[: len(texts[v])], rest[len(texts[v]) :]
        record[f"damage_{v}"] = statistics.mean(values) - base
    return record


def summarize_damages(per_rationale: list[dict]) -> dict:
    """Mean damage per deletion, its standard error, and the ratios the report shows."""
    damages = {v: [r[f"damage_{v}"] for r in per_rationale] for v in VARIANTS}
    mean = {v: statistics.mean(d) for v, d in damages.items()}

    def ratio(a, b):
        return a / b if b > 0 else None

    return {
        "rationales": len(per_rationale),
        "mean_damage": mean,
        "sem_damage": {v: statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else None for v, d in damages.items()},
        "top_vs_random": ratio(mean["top"], mean["random"]),
        "top_vs_heuristic": ratio(mean["top"], mean["heuristic"]),
        "heuristic_vs_random": ratio(mean["heuristic"], mean["random"]),
        "bottom_vs_random": ratio(mean["bottom"], mean["random"]),
    }


def _cached_nll(judge: Judge, rows: list[tuple[str, str, str]], cache: dict | None) -> list[float]:
    if cache is None:
        return judge.answer_nll(rows)
    missing = list(dict.fromkeys(row for row in rows if row not in cache))
    cache.update(zip(missing, judge.answer_nll(missing)) if missing else ())
    return [cache[row] for row in rows]


def ratio_se(per_rationale: list[dict], a: str, b: str, seed: int = 0, resamples: int = 1000) -> float | None:
    """Bootstrap standard error of mean damage a / mean damage b, resampling rationales."""
    rng = random.Random(seed)
    n = len(per_rationale)
    ratios = []
    for _ in range(resamples if n > 1 else 0):
        sample = [per_rationale[rng.randrange(n)] for _ in range(n)]
        below = statistics.mean(r[f"damage_{b}"] for r in sample)
        if below > 0:
            ratios.append(statistics.mean(r[f"damage_{a}"] for r in sample) / below)
    return statistics.stdev(ratios) if len(ratios) > 1 else None


def weights_quality(
    weights: list[dict],
    rationales: dict[str, dict],
    judge: str,
    *,
    fractions: tuple[float, ...] = (0.05, 0.1),
    draws: int = 3,
    dtype: str | None = None,
    progress: bool = False,
) -> dict:
    """The weighting stage's check of its own weights (weights/quality.json): the deletion test at each
    fraction with bootstrap standard errors of the ratios, the one line the stage prints, and a verdict.
    The weights fail when deleting the top by w does no more damage than deleting at random, within
    two standard errors of the paired difference, at every fraction."""
    cache: dict = {}
    by_fraction, passes = {}, []
    scorer = Judge(judge, dtype=dtype)  # one model for every fraction
    for fraction in fractions:
        result = deletion_test(
            weights,
            rationales,
            scorer,
            fraction=fraction,
            draws=draws,
            judge_cache=cache,
            progress=progress,
            dtype=dtype,
        )
        per = result.pop("per_rationale")
        differences = [r["damage_top"] - r["damage_random"] for r in per]
        margin = statistics.stdev(differences) / len(per) ** 0.5 if len(per) > 1 else None
        result["top_minus_random"] = statistics.mean(differences)
        result["top_minus_random_se"] = margin
        result["top_vs_random_se"] = ratio_se(per, "top", "random")
        result["top_vs_heuristic_se"] = ratio_se(per, "top", "heuristic")
        by_fraction[f"{fraction:g}"] = result
        passes.append(margin is not None and result["top_minus_random"] > 2 * margin)
    first = by_fraction[f"{fractions[0]:g}"]
    n = first["rationales"]
    if n < 2:
        verdict = "too few held-out rationales"
    else:
        verdict = "keypoints" if any(passes) else "no better than random"
    return {
        "judge": judge,
        "rationales": n,
        "fractions": by_fraction,
        "verdict": verdict,
        "line": quality_line(by_fraction, n),
    }


def quality_line(by_fraction: dict, rationales: int) -> str:
    """`keypoints: top 5 % = 7.9x random, 2.1x the digits heuristic on 200 held-out rationales`."""

    def x(value):
        return "n/a" if value is None else f"{value:.1f}x"

    parts = [
        f"top {100 * float(f):g} % = {x(r['top_vs_random'])} random, {x(r['top_vs_heuristic'])} the digits heuristic"
        for f, r in by_fraction.items()
    ]
    return f"keypoints: {'; '.join(parts)} on {rationales} held-out rationales"


def format_quality(quality: dict) -> str:
    """quality.json as the stage's line, a verdict and a table per fraction, in words a user reads."""

    def f(x, digits=2):
        return "n/a" if x is None else f"{x:.{digits}f}"

    verdicts = {
        "keypoints": "deleting the tokens it weighs highest hurts the answer more than deleting at random",
        "no better than random": "NOT better than random deletions: see the warning in the stage's log",
        "too few held-out rationales": "too few held-out rationales to tell (raise weighting.holdout)",
    }
    lines = [quality["line"], f"verdict: {verdicts[quality['verdict']]} (judge {quality['judge']})", ""]
    lines.append("| tokens deleted | top by w | bottom by w | digits first | random | top / random | top / digits |")
    lines.append("|---|---|---|---|---|---|---|")
    for fraction, r in quality["fractions"].items():
        d, e = r["mean_damage"], r["sem_damage"]
        cells = [f"{f(d[v])} ± {f(e[v])}" for v in ("top", "bottom", "heuristic", "random")]
        lines.append(
            f"| {100 * float(fraction):g} % | {' | '.join(cells)} | {f(r['top_vs_random'], 1)}x ± {f(r['top_vs_random_se'], 1)} "
            f"| {f(r['top_vs_heuristic'], 1)}x ± {f(r['top_vs_heuristic_se'], 1)} |"
        )
    lines.append("damage: rise of the judge's loss on the gold answer (nats) when those tokens are deleted")
    return "\n".join(lines)


def format_faithfulness(result: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.2f}"

    lines = [
        f"deletion test: {result['rationales']} held-out rationales, {100 * result['fraction']:.0f}% of tokens deleted, "
        f"judge {result['judge']}",
        "| deleted tokens | damage (nats) | sem | vs random |",
        "|---|---|---|---|",
    ]
    random_damage = result["mean_damage"]["random"]
    names = {"top": "top by w", "bottom": "bottom by w", "heuristic": "digits/operators first", "random": "random"}
    for v in VARIANTS:
        d = result["mean_damage"][v]
        lines.append(
            f"| {names[v]} | {d:.3f} | {f(result['sem_damage'][v])} | "
            f"{f(d / random_damage) if random_damage > 0 else 'n/a'} |"
        )
    lines.append(
        f"top/heuristic {f(result['top_vs_heuristic'])}; ROC AUC of w, digits/operators vs rest "
        f"{f(result['auc_digits_operators'])}"
    )
    return "\n".join(lines)


def _student_of(paths: RunPaths) -> str:
    import yaml

    snapshot = paths.config_snapshot("train_token_weighting")
    if not snapshot.is_file():
        raise DataError(f"{snapshot}: not found; pass --judge MODEL")
    return yaml.safe_load(snapshot.read_text())["student"]["model"]
