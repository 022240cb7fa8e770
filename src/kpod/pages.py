"""Pages that show token weights (the report's and `kpod show_weights`'): rationales with each token marked
by its weight, as in the paper's Figure 2, for the terminal and HTML, and the pages' style."""

from __future__ import annotations

import html
from pathlib import Path

from kpod.artifacts import RunPaths, rationale_key, read_rationales, read_weights
from kpod.stage_records import require_fresh


def _segments(rationale: str, offsets: list[tuple[int, int]], weights: list[float]) -> list[tuple[str, float | None]]:
    """The rationale cut into (text, weight) pieces; characters no token covers get None."""
    pieces, pos = [], 0
    for (start, end), w in sorted(zip(offsets, weights)):
        if end <= pos:
            continue
        start = max(start, pos)
        if start > pos:
            pieces.append((rationale[pos:start], None))
        pieces.append((rationale[start:end], w))
        pos = end
    if pos < len(rationale):
        pieces.append((rationale[pos:], None))
    return pieces


def within_rationale_ranks(weights: list[float]) -> list[float]:
    """Each weight's rank inside its rationale, from 0 (lowest) to 1 (highest); ties share a rank.
    The views colour by rank, so the contrast inside a rationale shows even when every w is near 0.5."""
    ordered = sorted(set(weights))
    if len(ordered) < 2:
        return [0.5] * len(weights)
    rank = {w: i / (len(ordered) - 1) for i, w in enumerate(ordered)}
    return [rank[w] for w in weights]


def terminal_line(rationale: str, offsets, weights, color: bool = True) -> str:
    """By rank inside the rationale: bold red for the top 20 % of tokens, yellow for the next 30 %,
    dim for the rest; without color: [token|0.87] (the weight itself)."""
    out = []
    for (text, w), r in _ranked_segments(rationale, offsets, weights):
        if w is None:
            out.append(text)
        elif not color:
            out.append(f"[{text}|{w:.2f}]")
        else:
            code = "1;31" if r >= 0.8 else "33" if r >= 0.5 else "2"
            out.append(f"\033[{code}m{text}\033[0m")
    return "".join(out)


def html_block(rationale: str, offsets, weights) -> str:
    """Background opacity = the token's rank inside the rationale (0.05 lowest to 0.9 highest)."""
    spans = []
    for (text, w), r in _ranked_segments(rationale, offsets, weights):
        safe = html.escape(text).replace("\n", "<br>")
        if w is None:
            spans.append(safe)
        else:
            spans.append(
                f'<span class="w" style="background: rgba(220, 40, 40, {0.05 + 0.85 * r:.2f})" '
                f'title="w = {w:.3f}, rank {r:.2f} in this rationale">{safe}</span>'
            )
    return '<p class="rationale">' + "".join(spans) + "</p>"


def _ranked_segments(rationale: str, offsets, weights):
    segments = _segments(rationale, offsets, weights)
    ranks = iter(within_rationale_ranks([w for _, w in segments if w is not None]))
    return [((text, w), None if w is None else next(ranks)) for text, w in segments]


def weight_examples(run_dir: str | Path, n: int = 3) -> list[tuple[dict, list, list]]:
    paths = RunPaths(run_dir)
    require_fresh(paths.root, "train_token_weighting")
    rows = read_rationales(paths.rationales("train"), include_incorrect=True)
    weights = read_weights(paths.weights)
    out = []
    for row in rows:
        stored = weights.get(rationale_key(row))
        if stored:
            out.append((row, stored.offsets, stored.weights))
        if len(out) >= n:
            break
    return out


HTML_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto} .rationale{line-height:1.9}"
    " .w{border-radius:3px;padding:1px 0}"
)


def show_weights(run_dir: str | Path, n: int = 3, html_path: str | None = None) -> dict:
    examples = weight_examples(run_dir, n)
    for row, offsets, weights in examples:
        print(f"\n{row['id']}  Q: {row['question']}")
        print(terminal_line(row["rationale"], offsets, weights))
    if html_path:
        body = "".join(
            f"<h3>{html.escape(r['id'])}</h3><p><b>Q:</b> {html.escape(r['question'])}</p>{html_block(r['rationale'], o, w)}"
            for r, o, w in examples
        )
        Path(html_path).write_text(
            f"<!doctype html><meta charset=utf-8><style>{HTML_STYLE}</style><h1>Token weights</h1>{body}"
        )
    return {"shown": len(examples), "html": html_path}
