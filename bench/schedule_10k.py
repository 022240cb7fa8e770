"""Schedule computation for 10,000 questions (100 epochs, 5 clusters), timed against computing the
budget curve alone in the same process; also the selector's quality against brute force.

    python bench/schedule_10k.py
"""

import itertools
import random
import statistics
import time

from kpod.curriculum.schedule import budget_curve, build_schedule, objective, select


def main() -> None:
    rng = random.Random(0)
    difficulties = [[rng.uniform(0.2, 5.0) for _ in range(rng.randint(1, 10))] for _ in range(10_000)]
    clusters = [rng.randrange(5) for _ in difficulties]
    start = time.perf_counter()
    total = sum(map(sum, difficulties))
    _ = [budget_curve(t, total, 0.3 * total, 50, 0.5) for t in range(100)]
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    schedule = build_schedule(difficulties, clusters, phases=100)
    seconds = time.perf_counter() - start
    print(
        f"10,000 questions, {sum(map(len, difficulties))} steps, 100 epochs: schedule in {seconds:.2f} s "
        f"({seconds / max(baseline, 1e-9):.0f}x the time of summing difficulties and the budget curve)"
    )
    print(f"stage 0 budget {schedule.table[0]['budget']:.1f}, achieved {schedule.table[0]['achieved']:.1f}")
    ratios = []
    for _ in range(500):
        n = rng.randint(1, 11)
        costs = [rng.uniform(0, 10) for _ in range(n)]
        groups = [rng.randrange(3) for _ in range(n)]
        budget, beta = rng.uniform(0, 30), rng.choice([0.0, 1.0, 12.0])
        best = max(
            (
                objective(list(s), costs, groups, beta)
                for r in range(n + 1)
                for s in itertools.combinations(range(n), r)
                if sum(costs[i] for i in s) <= budget
            ),
            default=0.0,
        )
        got = objective(select(costs, groups, budget, beta), costs, groups, beta)
        ratios.append(1.0 if best == 0 else got / best)
    print(
        f"selector / brute-force optimum on 500 random instances (n <= 11): mean {statistics.mean(ratios):.4f}, "
        f"min {min(ratios):.4f}"
    )


if __name__ == "__main__":
    main()
