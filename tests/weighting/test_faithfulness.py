import json
import random
import shutil

import pytest

from kpod.artifacts import write_json, write_jsonl
from kpod.cli import main
from kpod.files import DataError
from kpod.models import load_tokenizer
from kpod.pages import html_block, within_rationale_ranks
from kpod.rationale import split_steps
from kpod.weighting.faithfulness import (
    Judge,
    delete_tokens,
    deletion_texts,
    is_digit_or_operator,
    measure_faithfulness,
    ranked,
)
from kpod.weighting.train import check_run_weights

RATIONALE = "She sold 48/2 = 24 clips in May. So she sold 48+24 = 72 clips."


def test_delete_tokens_removes_exactly_their_characters():
    offsets = [[0, 3], [3, 8], [8, 11]]
    assert delete_tokens("She sold 48", offsets, [1]) == "She 48"
    assert delete_tokens("She sold 48", offsets, []) == "She sold 48"


def test_ranking_puts_ties_in_random_order_but_scores_first():
    order = ranked([0.1, 0.9, 0.5, 0.9], random.Random(0))
    assert set(order[:2]) == {1, 3} and order[2:] == [2, 0]


def test_deletion_variants(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    enc = tok(RATIONALE, add_special_tokens=False, return_offsets_mapping=True)
    tokens, offsets = tok.convert_ids_to_tokens(enc["input_ids"]), [list(o) for o in enc["offset_mapping"]]
    weights = [1.0 if "7" in t or "2" in t else 0.1 * i / len(tokens) for i, t in enumerate(tokens)]
    texts = deletion_texts(RATIONALE, tokens, offsets, weights, 0.2, 3, random.Random(0))
    k = max(1, round(0.2 * len(tokens)))
    assert "72" not in texts["top"][0] and "72" in texts["bottom"][0]
    assert len(texts["random"]) == 3
    # the heuristic deletes tokens with digits or operators first
    assert not any(c.isdigit() for c in texts["heuristic"][0]) or sum(map(is_digit_or_operator, tokens)) > k


def _tiny_run(tmp_path, tiny_llama, holdout_keys):
    run = tmp_path / "run"
    tok = load_tokenizer(str(tiny_llama))
    rows, weight_rows = [], []
    for i, (question, rationale, gold) in enumerate(
        [("How many?", RATIONALE, "72"), ("And now?", "Add 3 and 4 to get 7.", "7")]
    ):
        rows.append(
            {
                "id": f"q{i}",
                "question": question,
                "gold": gold,
                "rationale": rationale,
                "steps": split_steps(rationale),
                "correct": True,
            }
        )
        enc = tok(rationale, add_special_tokens=False, return_offsets_mapping=True)
        tokens = tok.convert_ids_to_tokens(enc["input_ids"])
        weight_rows.append(
            {
                "key": f"q{i}#0",
                "tokens": tokens,
                "offsets": [list(o) for o in enc["offset_mapping"]],
                "weights": [0.9 if is_digit_or_operator(t) else 0.2 for t in tokens],
            }
        )
    write_jsonl(run / "rationales/train.jsonl", rows)
    write_jsonl(run / "weights/weights.jsonl", weight_rows)
    write_json(run / "weights/heldout.json", {"questions": [], "keys": holdout_keys})
    write_json(run / "stages.json", {})
    return run, rows


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_t5"])
def test_the_judge_scores_each_answer_as_the_model_alone_would(model, request):
    """Rows of different lengths share a batch (a causal judge pads them on the left and keeps the
    logits of the answer positions only); each row's score is still the model's own summed loss of
    its answer, scored alone."""
    import torch

    judge = Judge(str(request.getfixturevalue(model)), batch_size=3)
    rows = [
        ("Tom has 3 apples and buys 4 more. How many?", "3+4 = 7 apples.", "7"),
        ("A box holds 12 pens.", "Half of 12 is 6.\nSo 6 pens are left in the box.", "6"),
        ("Sam ran 5 km a day for 7 days.", "5*7 = 35 km.", "35 kilometres"),
        ("Why?", "", "0"),
    ]
    scores = judge.answer_nll(rows)
    for row, score in zip(rows, scores):
        source, answer = judge._encode(*row)
        with torch.no_grad():
            if judge.seq2seq:
                loss = judge.model(input_ids=torch.tensor([source]), labels=torch.tensor([answer])).loss
            else:
                labels = torch.tensor([[-100] * len(source) + answer])
                loss = judge.model(input_ids=torch.tensor([source + answer]), labels=labels).loss
        assert score == pytest.approx(loss.item() * len(answer), rel=1e-4)


def test_faithfulness_on_a_run_folder(tmp_path, tiny_llama, capsys):
    run, rows = _tiny_run(tmp_path, tiny_llama, ["q0#0", "q1#0"])
    result = measure_faithfulness(run, judge=str(tiny_llama), draws=2, progress=False)
    assert result["rationales"] == 2 and set(result["mean_damage"]) == {"top", "bottom", "heuristic", "random"}
    saved = json.loads((run / "weights/faithfulness.json").read_text())
    assert saved["per_rationale"][0]["key"] == "q0#0"
    # the intact NLL is the judge's own score of the untouched rationale
    intact = Judge(str(tiny_llama)).answer_nll([(rows[0]["question"], rows[0]["rationale"], "72")])[0]
    assert saved["per_rationale"][0]["nll_intact"] == pytest.approx(intact, rel=1e-5)
    assert saved["auc_digits_operators"] == pytest.approx(1.0)
    assert main(["faithfulness", str(run), "--judge", str(tiny_llama), "--draws", "1"]) == 0
    assert "top by w" in capsys.readouterr().out
    # another budget beside the report's figures, not over them
    before = (run / "weights/faithfulness.json").read_text()
    out = tmp_path / "five.json"
    assert main(["faithfulness", str(run), "--judge", str(tiny_llama), "--fraction", "0.05", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["fraction"] == 0.05
    assert (run / "weights/faithfulness.json").read_text() == before


def test_faithfulness_needs_held_out_rationales(tmp_path, tiny_llama):
    run, _ = _tiny_run(tmp_path, tiny_llama, [])
    with pytest.raises(DataError, match="holdout"):
        measure_faithfulness(run, judge=str(tiny_llama), progress=False)


def test_views_colour_by_rank_inside_the_rationale():
    assert within_rationale_ranks([0.50, 0.52, 0.51]) == [0.0, 1.0, 0.5]
    page = html_block("ab", [(0, 1), (1, 2)], [0.50, 0.51])
    assert "rgba(220, 40, 40, 0.05)" in page and "rgba(220, 40, 40, 0.90)" in page


def _worked_solutions(data_dir, n):
    from kpod.data import load_dataset_splits
    from kpod.teacher.importers import reference_rationales

    return reference_rationales(load_dataset_splits("gsm8k", data_dir).train[:n])


def test_quality_check_tells_keypoints_from_random_weights(data_dir):
    """The weighting stage's own check, with the real pretrained judge: weights that put numbers and
    operators first are keypoints; flat weights (the top is then a random pick) are not."""
    from kpod.artifacts import rationale_key
    from kpod.weighting.faithfulness import format_quality, weights_quality

    rows = _worked_solutions(data_dir, 10)
    tok = load_tokenizer("smollm2")
    digits, flat = [], []
    for r in rows:
        enc = tok(r["rationale"], add_special_tokens=False, return_offsets_mapping=True)
        tokens = tok.convert_ids_to_tokens(enc["input_ids"])
        row = {"key": rationale_key(r), "tokens": tokens, "offsets": [list(o) for o in enc["offset_mapping"]]}
        digits.append({**row, "weights": [0.9 if is_digit_or_operator(t) else 0.1 for t in tokens]})
        flat.append({**row, "weights": [0.5] * len(tokens)})
    by_key = {rationale_key(r): r for r in rows}
    good = weights_quality(digits, by_key, "smollm2", draws=2)
    assert good["verdict"] == "keypoints" and set(good["fractions"]) == {"0.05", "0.1"}
    assert good["fractions"]["0.05"]["top_vs_heuristic"] == pytest.approx(1.0, abs=0.3)  # it is the heuristic
    assert good["line"].startswith("keypoints: top 5 % = ") and good["line"].endswith("on 10 held-out rationales")
    assert "the digits heuristic" in good["line"] and "hurts the answer more" in format_quality(good)
    bad = weights_quality(flat, by_key, "smollm2", draws=2)
    assert bad["verdict"] == "no better than random" and "NOT better than random" in format_quality(bad)


def test_every_weighting_run_checks_its_own_weights(finished_tiny_run):
    run, _ = finished_tiny_run
    quality = json.loads((run / "weights/quality.json").read_text())
    heldout = json.loads((run / "weights/heldout.json").read_text())["keys"]
    assert quality["rationales"] == len(heldout) >= 1 and set(quality["fractions"]) == {"0.05", "0.1"}
    summary = json.loads((run / "weights/summary.json").read_text())
    assert summary["keypoints"] == quality["line"] and "held-out rationales" in quality["line"]


def test_a_run_fitted_without_its_check_gets_the_same_check_afterwards(finished_tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_tiny_run[0], run)
    stage_wrote = json.loads((run / "weights/quality.json").read_text())
    (run / "weights/quality.json").unlink()
    assert main(["faithfulness", str(run), "--quality"]) == 0
    assert json.loads((run / "weights/quality.json").read_text()) == stage_wrote
    assert stage_wrote["line"] in capsys.readouterr().out
    assert main(["faithfulness", str(run), "--quality", "--fraction", "0.05"]) == 2
    assert "drop --fraction" in capsys.readouterr().err
    (run / "weights/heldout.json").write_text(json.dumps({"questions": [], "keys": []}))
    with pytest.raises(DataError, match="holdout"):
        check_run_weights(run)
    with pytest.raises(DataError, match="no weighting stage"):
        check_run_weights(tmp_path / "elsewhere")
