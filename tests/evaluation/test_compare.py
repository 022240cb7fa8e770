import json
import math

import numpy as np
import pytest

from kpod.artifacts import write_jsonl
from kpod.cli import main
from kpod.evaluation.compare import (
    arm_name,
    compare_runs,
    format_markdown,
    load_run,
    mcnemar_exact,
    paired_bootstrap,
)
from kpod.files import DataError


def test_mcnemar_exact_by_hand():
    # b = 1, c = 9: 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_paired_bootstrap_degenerate_and_closed_form():
    a, b = np.ones((1, 50)), np.zeros((1, 50))
    assert paired_bootstrap(a, b, 2000) == (1.0, 1.0, 1.0)
    # differences of 1 on 30 of 100 questions, 0 elsewhere: the bootstrap mean is Binomial(100, 0.3) / 100,
    # so its 95% interval is about 0.3 -/+ 1.96 * sqrt(0.3 * 0.7 / 100) = [0.21, 0.39]
    a = np.array([[1.0] * 30 + [0.0] * 70])
    diff, low, high = paired_bootstrap(a, np.zeros_like(a), 20_000)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 100)
    assert (
        diff == pytest.approx(0.3)
        and low == pytest.approx(0.3 - half, abs=0.015)
        and high == pytest.approx(0.3 + half, abs=0.015)
    )


def _run(tmp_path, name, correct, method="kpod", seed=0, ids=None, weight_floor=0.0):
    run = tmp_path / name
    ids = ids or [f"q{i}" for i in range(len(correct))]
    write_jsonl(
        run / "eval/test/predictions.jsonl",
        [{"id": q, "correct": c, "answer_sentence": True} for q, c in zip(ids, correct)],
    )
    (run / "configs").mkdir(parents=True)
    (run / "configs/train.yaml").write_text(
        f"method: {method}\nseed: {seed}\ntrain: {{uniform_weights: false, weight_floor: {weight_floor}}}\n"
        "difficulty: {use_weights: true}\n"
        "schedule: {progressive: true, beta: 12.0}\n"
    )
    return run


def test_compare_pools_seeds_and_pairs_questions(tmp_path, capsys):
    k0 = _run(tmp_path, "k0", [1, 1, 1, 0, 1, 0], seed=0)
    k1 = _run(tmp_path, "k1", [1, 1, 0, 0, 1, 1], seed=1)
    s0 = _run(tmp_path, "s0", [0, 1, 1, 0, 0, 0], method="std-cot", seed=0)
    s1 = _run(tmp_path, "s1", [1, 0, 0, 0, 0, 1], method="std-cot", seed=1)
    result = compare_runs([load_run(r, "test") for r in (k0, k1, s0, s1)], resamples=2000)
    kpod, std = result["arms"]
    assert kpod["arm"] == "kpod" and kpod["accuracy_mean"] == pytest.approx(100 * 8 / 12)
    assert std["arm"] == "std-cot" and std["accuracy_mean"] == pytest.approx(100 * 4 / 12)
    pair = result["pairs"][0]
    assert [(s["a_only"], s["b_only"]) for s in pair["per_seed"]] == [(2, 0), (2, 0)]
    assert (pair["a_only"], pair["b_only"]) == (4, 0) and pair["p_pooled"] == pytest.approx(2 / 16)
    assert pair["difference"] == pytest.approx(100 * 4 / 12)
    # per question, kpod's two seeds against std-cot's: q0, q1, q4 for kpod, none for std-cot
    assert (pair["questions_a_better"], pair["questions_b_better"]) == (3, 0)
    assert pair["p_questions"] == pytest.approx(2 / 8)
    html = tmp_path / "c.html"
    assert (
        main(["compare", str(k0), str(k1), str(s0), str(s1), "--html", str(html), "--json", str(tmp_path / "c.json")])
        == 0
    )
    assert "data:image/png;base64" in html.read_text() and "kpod vs std-cot" in capsys.readouterr().out
    assert json.loads((k0 / "comparison.json").read_text())["arm"] == "kpod"


def test_the_question_level_test_counts_a_question_once_however_many_seeds(tmp_path):
    """Three seeds that all get q0 and q1 right, against three that get neither (q2, q3: one seed each,
    on both sides): pooled McNemar counts q0 and q1 three times, the question-level sign test once."""
    kpod = [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    std = [[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    runs = [_run(tmp_path, f"k{s}", c, seed=s) for s, c in enumerate(kpod)]
    runs += [_run(tmp_path, f"s{s}", c, method="std-cot", seed=s) for s, c in enumerate(std)]
    (pair,) = compare_runs([load_run(r, "test") for r in runs], resamples=200)["pairs"]
    assert (pair["a_only"], pair["b_only"]) == (8, 2) and pair["p_pooled"] == pytest.approx(112 / 1024)
    assert (pair["questions_a_better"], pair["questions_b_better"]) == (2, 0)
    assert pair["p_questions"] == pytest.approx(2 / 4)
    assert "| 2 / 0 | 0.5 |" in format_markdown({"questions": 4, "arms": [], "pairs": [pair]})


def test_arms_with_different_seeds_are_compared_on_the_shared_seed(tmp_path):
    k0 = _run(tmp_path, "k0", [1, 1, 1, 0, 1, 0], seed=0)
    k1 = _run(tmp_path, "k1", [0, 0, 0, 0, 0, 0], seed=1)
    s0 = _run(tmp_path, "s0", [0, 1, 1, 0, 0, 0], method="std-cot", seed=0)
    result = compare_runs([load_run(r, "test") for r in (k0, k1, s0)], resamples=500)
    assert result["arms"][0]["accuracy_mean"] == pytest.approx(100 * 4 / 12)  # the arm row keeps every seed
    (pair,) = result["pairs"]
    # difference, discordant counts and p all from seed 0: 4 vs 2 correct, 2 questions only kpod's
    assert pair["difference"] == pytest.approx(100 * 2 / 6)
    assert (pair["a_only"], pair["b_only"]) == (2, 0) and [s["seed_a"] for s in pair["per_seed"]] == [0]
    assert "s0 0.5" in format_markdown(result)


def test_arms_are_named_by_their_ablation_settings(tmp_path):
    assert arm_name(_run(tmp_path, "k", [1])) == "kpod"
    assert arm_name(_run(tmp_path, "f", [1], weight_floor=0.5)) == "kpod/weight-floor-0.5"
    assert arm_name(_run(tmp_path, "s", [1], method="std-cot")) == "std-cot"
    assert arm_name(tmp_path / "never-trained") == "base"


def test_compare_refuses_different_questions(tmp_path):
    a = _run(tmp_path, "a", [1, 0, 1])
    b = _run(tmp_path, "b", [1, 0, 1], method="std-cot", ids=["q0", "q1", "x9"])
    with pytest.raises(DataError, match="different questions"):
        compare_runs([load_run(a, "test"), load_run(b, "test")])
    assert main(["compare", str(a), "--split", "dev"]) == 2  # not evaluated on dev: an error, not a traceback


def test_several_splits_are_pooled_by_question(tmp_path):
    """--split dev,test: both splits' questions, kept apart by split (the same id may occur in both)."""
    a = _run(tmp_path, "a", [1, 0, 1])
    b = _run(tmp_path, "b", [0, 0, 1], method="std-cot")
    for run, correct in ((a, [1, 1]), (b, [0, 1])):
        write_jsonl(
            run / "eval/dev/predictions.jsonl",
            [{"id": f"q{i}", "correct": c, "answer_sentence": True} for i, c in enumerate(correct)],
        )
    pooled = load_run(a, "dev,test")
    assert sorted(pooled.correct) == ["dev/q0", "dev/q1", "test/q0", "test/q1", "test/q2"]
    result = compare_runs([pooled, load_run(b, "dev,test")], resamples=500)
    assert [arm["accuracy_mean"] for arm in result["arms"]] == [pytest.approx(80.0), pytest.approx(40.0)]
    assert (result["pairs"][0]["a_only"], result["pairs"][0]["b_only"]) == (2, 0)


def test_a_run_counted_twice_is_refused(tmp_path):
    """Listed twice, copied under another name, or a second run of one arm with the same seed."""
    import shutil

    k0 = _run(tmp_path, "k0", [1, 1, 0, 0, 1, 0])
    s0 = _run(tmp_path, "s0", [0, 1, 1, 0, 0, 0], method="std-cot")
    shutil.copytree(k0, tmp_path / "copy-of-k0")
    (tmp_path / "copy-of-k0/configs/train.yaml").write_text(
        (k0 / "configs/train.yaml").read_text().replace("seed: 0", "seed: 7")
    )
    again = _run(tmp_path, "k0-again", [1, 0, 0, 0, 1, 1])
    for runs, message in [
        ([k0, s0, k0], "k0 is listed twice"),
        ([k0, s0, tmp_path / "copy-of-k0"], "copy-of-k0 has the same predictions as .*k0"),
        ([k0, s0, again], "k0-again is a second run of arm kpod with seed 0, beside .*k0"),
    ]:
        with pytest.raises(DataError, match=message):
            compare_runs([load_run(r, "test") for r in runs])
    assert main(["compare", str(k0), str(s0), str(k0)]) == 2
    compare_runs([load_run(r, "test") for r in (k0, s0)], resamples=100)
