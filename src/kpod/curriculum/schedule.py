"""The in-rationale progressive schedule (paper Eqs. 9-13, method doc section 6).

c_i(t) is the number of rationale steps of item i given in the input in curriculum phase t (one per epoch,
or schedule.phases of them over the run). Every
item starts answer-only (c_i = n_i). Each selection round hands one more step (the last input
step) to the output for the selected items S, chosen to maximise

    g(S) = sum_{i in S} delta_i + beta * sum_k sqrt(|C_k ∩ S|)   s.t.  sum_{i in S} delta_i <= ΔD

(the paper's F(S) up to the constant -ΔD), a monotone submodular function under a knapsack
constraint. `select` is Greedy+Max (Yaroslavtsev, Zhou, Avdiukhin 2020): density greedy where
every greedy prefix is also tried with the best single feasible addition, a 1/2-approximation
that contains the best-singleton rule (the empty prefix).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kpod.artifacts import (
    RunPaths,
    ScheduleFile,
    atomic_write_text,
    rationale_key,
    read_difficulties,
    read_json,
    read_rationales,
    write_schedule,
)
from kpod.config import KPODConfig


def budget_curve(t: float, total: float, c0: float, peak: float, p: float) -> float:
    """D(t) = C0 + (B - C0) (t / T)^(p+1) for t < T, then B (closed form of Eq. 10)."""
    if peak <= 0 or t >= peak:
        return total
    return c0 + (total - c0) * (t / peak) ** (p + 1)


def objective(selected: list[int], costs: list[float], groups: list[int], beta: float) -> float:
    counts = Counter(groups[i] for i in selected)
    return sum(costs[i] for i in selected) + beta * sum(math.sqrt(c) for c in counts.values())


def select(costs: list[float], groups: list[int], budget: float, beta: float) -> list[int]:
    """Indices maximising objective() with sum(costs) <= budget (Greedy+Max, deterministic)."""
    if budget < 0 or not costs:
        return []
    by_group: dict[int, list[int]] = {}
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], i)):
        by_group.setdefault(groups[i], []).append(i)
    sorted_costs = {g: [costs[i] for i in items] for g, items in by_group.items()}
    used = {g: 0 for g in by_group}  # greedy takes each group's cheapest first, so used items are a prefix
    chosen: list[int] = []
    spent = value = 0.0
    best_value, best_prefix, best_extra = 0.0, 0, None
    tolerance = 1e-9 * max(1.0, budget)

    def diversity_gain(g: int) -> float:
        return beta * (math.sqrt(used[g] + 1) - math.sqrt(used[g]))

    while True:
        remaining = budget - spent + tolerance
        # Max step: the best single feasible addition to the current greedy prefix
        for g, items in by_group.items():
            k = bisect.bisect_right(sorted_costs[g], remaining, lo=used[g]) - 1
            if k >= used[g]:
                gain = sorted_costs[g][k] + diversity_gain(g)
                if value + gain > best_value + 1e-12:
                    best_value, best_prefix, best_extra = value + gain, len(chosen), items[k]
        # Greedy step: the feasible item of highest marginal gain per unit cost
        pick, pick_density = None, -1.0
        for g, items in by_group.items():
            if used[g] < len(items) and sorted_costs[g][used[g]] <= remaining:
                cost = sorted_costs[g][used[g]]
                density = math.inf if cost <= 0 else (cost + diversity_gain(g)) / cost
                if density > pick_density:
                    pick, pick_density = g, density
        if pick is None:
            break
        i = by_group[pick][used[pick]]
        value += costs[i] + diversity_gain(pick)
        spent += costs[i]
        used[pick] += 1
        chosen.append(i)
        if value > best_value + 1e-12:
            best_value, best_prefix, best_extra = value, len(chosen), None
    result = chosen[:best_prefix] + ([best_extra] if best_extra is not None else [])
    return sorted(result)


@dataclass
class Schedule:
    phases: int
    peak: float
    total: float
    c0: float
    input_steps: list[list[int]]  # per item, c_i(t) for t = 0..phases-1
    table: list[dict] = field(default_factory=list)


def build_schedule(
    difficulties: list[list[float]],
    groups: list[int],
    phases: int,
    p: float = 0.5,
    c0_ratio: float = 0.3,
    beta: float = 12.0,
    peak_fraction: float = 0.5,
) -> Schedule:
    """The whole schedule, computed before training (deterministic)."""
    n_steps = [len(d) for d in difficulties]
    current = list(n_steps)
    total = float(sum(sum(d) for d in difficulties))
    c0 = c0_ratio * total
    peak = peak_fraction * phases
    achieved = 0.0
    history: list[list[int]] = []
    table = []

    def round_(budget: float) -> list[int]:
        candidates = [i for i in range(len(current)) if current[i] > 0]
        costs = [max(0.0, difficulties[i][current[i] - 1]) for i in candidates]
        picked = select(costs, [groups[i] for i in candidates], budget=budget, beta=beta)
        return [candidates[j] for j in picked]

    for t in range(phases):
        full = t >= peak or phases < 2  # with one phase there is nothing to progress over
        target = total if full else budget_curve(t, total, c0=c0, peak=peak, p=p) if t > 0 else c0
        selected: list[int] = []
        if full:
            moved = [i for i in range(len(current)) if current[i] > 0]
            current = [0] * len(current)
            achieved = total
            selected = moved
        else:
            rounds = 0
            while True:  # phase 0 repeats rounds until C0 is used; later phases take one round (Δs = 1)
                chosen = round_(target - achieved)
                for i in chosen:
                    achieved += max(0.0, difficulties[i][current[i] - 1])
                    current[i] -= 1
                selected.extend(chosen)
                rounds += 1
                if t > 0 or not chosen:
                    break
        history.append(list(current))
        counts = Counter(groups[i] for i in selected)
        table.append(
            {
                "phase": t,
                "budget": target,
                "achieved": achieved,
                "selected": len(selected),
                "per_cluster": {str(k): counts.get(k, 0) for k in sorted(set(groups))},
                "full_rationale_items": sum(c == 0 for c in current),
            }
        )
    input_steps = [[history[t][i] for t in range(phases)] for i in range(len(current))]
    return Schedule(phases, peak, total=total, c0=c0, input_steps=input_steps, table=table)


def format_table(schedule: Schedule) -> str:
    clusters = sorted({k for row in schedule.table for k in row["per_cluster"]}, key=int)
    head = f"{'phase':>5} {'budget D(t)':>12} {'achieved':>10} {'moved':>6} {'full':>6}  " + " ".join(
        f"{'c' + k:>5}" for k in clusters
    )
    lines = [head]
    for row in schedule.table:
        lines.append(
            f"{row['phase']:>5} {row['budget']:>12.2f} {row['achieved']:>10.2f} {row['selected']:>6} "
            f"{row['full_rationale_items']:>6}  " + " ".join(f"{row['per_cluster'][k]:>5}" for k in clusters)
        )
    return "\n".join(lines)


# How steps move from input to output over the phases: one entry per schedule.kind. Each takes the
# schedule inputs and returns the Schedule; a new kind is one decorated function here (and its test).


@dataclass
class ScheduleInputs:
    difficulties: list[list[float]]  # per item, per step
    groups: list[int]  # per item, its question's cluster
    phases: int
    p: float = 0.5
    c0_ratio: float = 0.3
    beta: float = 12.0
    peak_fraction: float = 0.5


SCHEDULES: dict[str, Callable[[ScheduleInputs], Schedule]] = {}


def schedule_kind(name: str):
    def register(build: Callable[[ScheduleInputs], Schedule]) -> Callable[[ScheduleInputs], Schedule]:
        SCHEDULES[name] = build
        return build

    return register


@schedule_kind("kpod")
def kpod_schedule(x: ScheduleInputs) -> Schedule:
    """The paper's: under the budget curve, the steps that maximise difficulty plus cluster diversity."""
    return build_schedule(
        x.difficulties,
        x.groups,
        phases=x.phases,
        p=x.p,
        c0_ratio=x.c0_ratio,
        beta=x.beta,
        peak_fraction=x.peak_fraction,
    )


@schedule_kind("none")
def whole_rationale_schedule(x: ScheduleInputs) -> Schedule:
    """The whole rationale in the output from the first phase: the curriculum switched off."""
    return schedule_from_steps([[0] * x.phases for _ in x.difficulties], x, peak=0.0)


@schedule_kind("linear")
def linear_schedule(x: ScheduleInputs) -> Schedule:
    """A control that ignores difficulty and diversity: in curriculum phase t < T every item hands
    round(n_i (t + 1) / (T + 1)) of its n_i steps to the output (about the same share each phase),
    from T = ceil(peak_fraction * phases) on the whole rationale, as kpod's."""
    peak = x.peak_fraction * x.phases
    curriculum = math.ceil(peak) if x.phases >= 2 else 0
    steps = []
    for d in x.difficulties:
        n = len(d)
        steps.append(
            [n - math.floor(n * (t + 1) / (curriculum + 1) + 0.5) if t < curriculum else 0 for t in range(x.phases)]
        )
    return schedule_from_steps(steps, x, peak=peak)


def schedule_from_steps(input_steps: list[list[int]], x: ScheduleInputs, peak: float) -> Schedule:
    """A Schedule from given c_i(t), with kpod's table (difficulty moved so far, items moved per cluster)."""
    total = float(sum(sum(d) for d in x.difficulties))
    table = []
    for t in range(x.phases):
        before = [len(d) if t == 0 else input_steps[i][t - 1] for i, d in enumerate(x.difficulties)]
        moved = [i for i in range(len(input_steps)) if input_steps[i][t] < before[i]]
        achieved = sum(sum(d[input_steps[i][t] :]) for i, d in enumerate(x.difficulties))
        counts = Counter(x.groups[i] for i in moved)
        table.append(
            {
                "phase": t,
                "budget": achieved,
                "achieved": achieved,
                "selected": len(moved),
                "per_cluster": {str(k): counts.get(k, 0) for k in sorted(set(x.groups))},
                "full_rationale_items": sum(c[t] == 0 for c in input_steps),
            }
        )
    return Schedule(
        x.phases, peak, total=total, c0=table[0]["achieved"] if table else 0.0, input_steps=input_steps, table=table
    )


def build_schedule_file(cfg: KPODConfig) -> dict:
    """Schedule for the training rationales from the run folder's difficulties and clusters."""
    paths = RunPaths(cfg.run_dir)
    rows = read_rationales(paths.rationales("train"), include_incorrect=cfg.train.include_incorrect)
    difficulties = read_difficulties(paths.difficulties)
    clusters = read_json(paths.clusters, "delete it and rerun `kpod cluster`", ("assignments",))["assignments"]
    keys = [rationale_key(r) for r in rows]
    missing = [k for k in keys if k not in difficulties]
    if missing:
        raise ValueError(f"{paths.difficulties}: no difficulties for {len(missing)} rationale(s), e.g. {missing[0]}")
    s = cfg.schedule
    schedule = SCHEDULES[s.kind](
        ScheduleInputs(
            [difficulties[k] for k in keys],
            [clusters.get(r["id"], 0) for r in rows],
            phases=cfg.curriculum_phases(),
            p=s.p,
            c0_ratio=s.c0_ratio,
            beta=s.beta,
            peak_fraction=s.peak_fraction,
        )
    )
    write_schedule(
        paths.schedule,
        ScheduleFile(
            epochs=cfg.train.epochs,
            phases=schedule.phases,
            input_steps=dict(zip(keys, schedule.input_steps)),
            kind=s.kind,
            phase_unit="epoch" if s.phases is None else "steps",
            peak_phase=schedule.peak,
            total_difficulty=schedule.total,
            c0=schedule.c0,
            table=schedule.table,
        ),
    )
    text = format_table(schedule)
    atomic_write_text(paths.schedule_table, text + "\n")
    print(text)
    return {"phases": schedule.phases, "total_difficulty": schedule.total, "c0": schedule.c0}
