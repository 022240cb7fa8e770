import itertools
import math
import random
import statistics

import pytest

from kpod.curriculum.schedule import budget_curve, build_schedule, objective, select


def test_budget_curve_closed_form():
    B, C0, T, p = 100.0, 30.0, 5.0, 0.5
    assert budget_curve(0, B, C0, T, p) == C0
    assert budget_curve(T, B, C0, T, p) == B and budget_curve(9, B, C0, T, p) == B
    for t in (1, 2, 3, 4):
        assert budget_curve(t, B, C0, T, p) == pytest.approx(C0 + (B - C0) * (t / T) ** 1.5)
    assert all(budget_curve(t, B, C0, T, p) <= budget_curve(t + 1, B, C0, T, p) for t in range(8))


def _brute(costs, groups, budget, beta):
    best = 0.0
    for r in range(len(costs) + 1):
        for subset in itertools.combinations(range(len(costs)), r):
            if sum(costs[i] for i in subset) <= budget + 1e-9:
                best = max(best, objective(list(subset), costs, groups, beta))
    return best


def test_selector_against_brute_force():
    rng = random.Random(0)
    ratios = []
    for _ in range(300):
        n = rng.randint(1, 10)
        costs = [round(rng.uniform(0, 10), 2) for _ in range(n)]
        groups = [rng.randrange(3) for _ in range(n)]
        budget, beta = rng.uniform(0, 30), rng.choice([0.0, 1.0, 12.0])
        chosen = select(costs, groups, budget, beta)
        assert sum(costs[i] for i in chosen) <= budget + 1e-6
        optimum = _brute(costs, groups, budget, beta)
        ratio = 1.0 if optimum == 0 else objective(chosen, costs, groups, beta) / optimum
        assert ratio >= 0.5 - 1e-9
        ratios.append(ratio)
    print(f"selector / brute-force optimum: mean {statistics.mean(ratios):.4f}, min {min(ratios):.4f}")
    assert statistics.mean(ratios) > 0.95


def _imbalance(counts):
    return max(counts) - min(counts)


def test_diversity_term_balances_clusters():
    rng = random.Random(1)
    costs = [rng.uniform(1, 2) if i < 40 else rng.uniform(2, 4) for i in range(60)]  # cluster 0 is cheap
    groups = [0 if i < 40 else 1 + i % 2 for i in range(60)]

    def per(chosen):
        return [sum(groups[i] == g for i in chosen) for g in range(3)]

    plain, diverse = per(select(costs, groups, 40, 0.0)), per(select(costs, groups, 40, 12.0))
    assert _imbalance(diverse) < _imbalance(plain)


def _random_difficulties(rng, n):
    return [[rng.uniform(0.5, 3) for _ in range(rng.randint(1, 7))] for _ in range(n)]


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
def test_schedule_properties(epochs):
    rng = random.Random(epochs)
    diffs = _random_difficulties(rng, 80)
    groups = [rng.randrange(5) for _ in diffs]
    s = build_schedule(diffs, groups, epochs)
    for d, row in zip(diffs, s.input_steps):
        assert len(row) == epochs and row[0] <= len(d)
        assert all(a >= b for a, b in zip(row, row[1:])), "c_i must never increase"
        assert row[-1] == 0, "the last epoch trains on the full rationale"
        assert all(row[t] == 0 for t in range(epochs) if t >= s.peak)
    for row in s.table:  # the budget is never exceeded
        assert row["achieved"] <= row["budget"] + 1e-6


def test_phase_zero_fills_c0_and_moves_last_steps_first():
    diffs = [[1.0, 1.0, 1.0]] * 10
    s = build_schedule(diffs, [0] * 10, 10, c0_ratio=0.3, beta=0.0)
    assert s.table[0]["achieved"] == pytest.approx(9.0)  # C0 = 0.3 * 30
    assert sum(3 - row[0] for row in s.input_steps) == 9
    # after phase 0, each phase moves at most one step per question
    for row in s.input_steps:
        assert all(a - b <= 1 for a, b in zip(row[1:], row[2:]))


def test_edge_cases():
    s = build_schedule([[0.0], [2.0, 0.0], [1.0] * 12], [0, 0, 4], 4)  # ties, zero costs, many steps
    assert [row[-1] for row in s.input_steps] == [0, 0, 0]
    s = build_schedule([[1.0]], [0], 1)
    assert s.input_steps == [[0]]
    assert select([], [], 10, 1.0) == []


def test_deterministic():
    rng = random.Random(3)
    diffs = _random_difficulties(rng, 2000)
    groups = [rng.randrange(5) for _ in diffs]
    a = build_schedule(diffs, groups, 20)
    b = build_schedule(diffs, groups, 20)
    assert a.input_steps == b.input_steps and a.table == b.table


def _inputs(phases=8, **kw):
    from kpod.curriculum.schedule import ScheduleInputs

    rng = random.Random(0)
    difficulties = [[rng.uniform(0.1, 3) for _ in range(rng.randint(1, 7))] for _ in range(40)]
    return ScheduleInputs(difficulties, [i % 5 for i in range(40)], phases=phases, **kw)


def test_linear_schedule_moves_the_same_share_of_every_item_each_phase_ignoring_difficulty():
    from kpod.curriculum.schedule import SCHEDULES

    x = _inputs()
    linear = SCHEDULES["linear"](x)
    for d, c in zip(x.difficulties, linear.input_steps):
        n = len(d)
        assert c == [n - math.floor(n * (t + 1) / 5 + 0.5) if t < 4 else 0 for t in range(8)]
        assert all(a >= b for a, b in zip(c, c[1:]))  # steps only ever move to the output
    reversed_difficulty = _inputs()
    reversed_difficulty.difficulties = [list(reversed(d)) for d in x.difficulties]
    assert SCHEDULES["linear"](reversed_difficulty).input_steps == linear.input_steps  # difficulty plays no part
    kpod = SCHEDULES["kpod"](x)
    assert kpod.input_steps == build_schedule(x.difficulties, x.groups, phases=8).input_steps
    assert [row["full_rationale_items"] for row in linear.table][4:] == [40] * 4
    assert [all(c[t] == 0 for c in kpod.input_steps) for t in range(4, 8)] == [True] * 4  # same peak as kpod's


def test_none_schedule_gives_the_whole_rationale_in_every_phase():
    from kpod.curriculum.schedule import SCHEDULES

    none = SCHEDULES["none"](_inputs(phases=3))
    assert all(c == [0, 0, 0] for c in none.input_steps)
    assert none.table[0]["achieved"] == none.total


def test_a_new_schedule_kind_is_one_registered_function(tmp_path, tiny_llama, monkeypatch):
    """Registered in curriculum/schedule.py's table, a kind is accepted by the config check, written to
    schedule.json with its name by the cluster stage, and read back by the typed reader training uses."""
    import json

    from kpod import pipeline
    from kpod.artifacts import RunPaths, read_schedule
    from kpod.config import load_config
    from kpod.curriculum import schedule as module

    monkeypatch.setitem(
        module.SCHEDULES,
        "answer-first",
        lambda x: module.schedule_from_steps(
            [[len(d)] * (x.phases - 1) + [0] for d in x.difficulties], x, peak=x.phases - 1
        ),
    )
    cfg = load_config(
        overrides=[
            "dataset=gsm8k",
            "teacher.kind=reference",
            "data.max_train_questions=6",
            f"student.model={tiny_llama}",
            "schedule.kind=answer-first",
            "train.epochs=3",
            "weighting.epochs=1",
            f"output_dir={tmp_path / 'run'}",
        ]
    )
    for stage in ("generate", "train_token_weighting", "calculate_difficulties", "cluster"):
        pipeline.STAGE_FUNCTIONS[stage](cfg)
    written = read_schedule(RunPaths(cfg.run_dir).schedule)
    assert written.kind == "answer-first" and written.phases == 3
    assert all(c[:2] == [c[0]] * 2 and c[2] == 0 for c in written.input_steps.values())
    assert json.loads(RunPaths(cfg.run_dir).schedule.read_text())["kind"] == "answer-first"
