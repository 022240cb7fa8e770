import itertools
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


def test_stage_zero_fills_c0_and_moves_last_steps_first():
    diffs = [[1.0, 1.0, 1.0]] * 10
    s = build_schedule(diffs, [0] * 10, 10, c0_ratio=0.3, beta=0.0)
    assert s.table[0]["achieved"] == pytest.approx(9.0)  # C0 = 0.3 * 30
    assert sum(3 - row[0] for row in s.input_steps) == 9
    # after stage 0, each stage moves at most one step per question
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
