"""What the quality check's judge costs: kpod's Judge against scoring with the full sequence's logits.

The weighting stage's own check (weights/quality.json) scores about 13 texts per held-out rationale
with the pretrained student, so its judge is most of the stage's time. kpod's causal judge pads on the
left and asks the model for the answer positions' logits only; the baseline is the plain way, a
right-padded batch whose logits cover every position (what kpod did until 2026-12-06). Both score the
same rows (the first correct GPT-3.5 rationale of SVAMP training questions) in this process, in turn.

    KPOD_DATA_DIR=../shared/data python bench/judge_cost.py [--rows 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import data_root  # bench/common.py: bench/ is on sys.path when a bench runs

from kpod.data import load_dataset_splits
from kpod.layout import DistillCollator, source_target_item, token_nll
from kpod.teacher.importers import first_correct_per_question, import_rationales
from kpod.weighting.faithfulness import Judge


@torch.no_grad()
def full_logits_nll(judge: Judge, rows: list[tuple[str, str, str]]) -> list[float]:
    out = []
    pad = judge.tokenizer.pad_token_id or 0
    for start in range(0, len(rows), judge.batch_size):
        items = [source_target_item(*judge._encode(*r), False) for r in rows[start : start + judge.batch_size]]
        batch = DistillCollator(pad, seq2seq=False)(items)
        logits = judge.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out.extend(token_nll(logits, batch["labels"], causal=True).sum(1).tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--judge", default="smollm2")
    args = parser.parse_args()
    root = data_root()
    train = load_dataset_splits("svamp", root).train
    records, _ = import_rationales(root / "splits_mcc_kd/SVAMP/train.json", train, "mcc_kd")
    questions = {q.id: q for q in train}
    chosen = first_correct_per_question(records, args.rows)
    rows = [(questions[r["id"]].question, r["rationale"], questions[r["id"]].answer) for r in chosen]
    judge = Judge(args.judge)
    times = {"kpod": [], "full logits": []}
    for _ in range(args.repeats):
        for name, score in (("kpod", judge.answer_nll), ("full logits", lambda r: full_logits_nll(judge, r))):
            start = time.perf_counter()
            result = score(rows)
            times[name].append(time.perf_counter() - start)
            if name == "kpod":
                ours = result
            else:
                theirs = result
    best = {name: min(t) for name, t in times.items()}
    difference = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"{len(rows)} rows, batch {judge.batch_size}, judge {args.judge}, best of {args.repeats}")
    print(f"kpod judge {best['kpod']:.1f} s, full logits {best['full logits']:.1f} s")
    print(f"full logits / kpod = {best['full logits'] / best['kpod']:.2f}x; largest NLL difference {difference:.2e}")


if __name__ == "__main__":
    main()
