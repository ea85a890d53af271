"""Canary statistics: error rates and power under repeated looks, sequence vs naive peeking.

The full version of tests/unit/evaluation/test_canary.py. Each row runs REPS seeded
synthetic canaries (dispatchloop.testing.canary): 10 % of decisions go to the
challenger, a look every 500 decisions, at most 20,000 decisions (40 looks), the
shipped thresholds (confidence 0.99, 500 decisions per arm before a verdict,
margins 0.02 late / 0.01 cancel) with `planned_decisions` 10,000. Outcomes:
reward ~ N(base, 4) minus 5 per late and 20 per cancelled booking; champion base -8,
late 10 %, cancelled 3 %.

Two methods on the same seeds:
- `sequence`: evaluation.canary as shipped (anytime-valid confidence sequence);
- `peeking`: the same verdict rules, but each look uses a fixed-level interval
  (z at 1 - alpha/6: what a naive canary would compute), i.e. the peer the
  sequence must beat on error rate.

Figures: share of canaries promoted / rolled back / undecided at expiry, each with
its 95 % Wilson interval, and the mean decisions at the stop.

    .venv/bin/python benchmarks/canary.py            # 1,000 canaries a row (~2 min)
    .venv/bin/python benchmarks/canary.py --reps 100 # smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from datetime import UTC, datetime
from unittest import mock

import numpy as np
from scipy import stats

from dispatchloop.evaluation import canary
from dispatchloop.evaluation.canary import CanaryThresholds
from dispatchloop.settings import LoopSettings
from dispatchloop.testing.canary import Arm, Run, run_canary

LOOP = LoopSettings()
THRESHOLDS = CanaryThresholds(
    confidence=LOOP.canary_confidence,
    min_decisions=LOOP.canary_min_decisions,
    late_margin=LOOP.canary_late_margin,
    cancel_margin=LOOP.canary_cancel_margin,
    planned_decisions=10_000,
)
CHAMPION = Arm()
SCENARIOS: list[tuple[str, Arm, str]] = [
    ("identical", Arm(), "none (any decision is an error)"),
    ("better +0.5 reward", Arm(base_mean=-7.5), "promote"),
    ("better +1.0 reward", Arm(base_mean=-7.0), "promote"),
    ("worse -0.5 reward", Arm(base_mean=-8.5), "rollback"),
    ("worse -1.0 reward", Arm(base_mean=-9.0), "rollback"),
    ("better reward, late +8 pts", Arm(base_mean=-6.0, late=0.18), "rollback"),
]


def fixed_radius(variance_of_mean: float, t: int, alpha: float, _planned: int) -> float:
    """The naive peer: a fixed-level interval at every look."""
    if t <= 0:
        return math.inf
    return float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(variance_of_mean)


def wilson(k: int, n: int) -> str:
    z = 1.959964
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)
    return f"{100 * p:.1f} % [{low:.1f}, {high:.1f}]"


def runs(challenger: Arm, reps: int, seed: int) -> list[Run]:
    rng = np.random.default_rng(seed)
    return [run_canary(rng, CHAMPION, challenger, THRESHOLDS) for _ in range(reps)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=1_000)
    args = parser.parse_args()
    started = time.perf_counter()
    host = platform.processor() or platform.machine()
    print(
        f"canary benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {host}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, {args.reps} canaries a row"
    )
    print("| challenger | expected | method | promoted | rolled back | undecided | decisions |")
    print("|---|---|---|---|---|---|---|")
    for index, (name, arm, expected) in enumerate(SCENARIOS):
        for method in ("sequence", "peeking"):
            if method == "peeking":
                with mock.patch.object(canary, "cs_radius", fixed_radius):
                    result = runs(arm, args.reps, 1_000 + index)
            else:
                result = runs(arm, args.reps, 1_000 + index)
            count = {v: sum(r.verdict == v for r in result) for v in ("promote", "rollback")}
            undecided = args.reps - count["promote"] - count["rollback"]
            mean = sum(r.decisions for r in result) / args.reps
            print(
                f"| {name} | {expected} | {method} | {wilson(count['promote'], args.reps)} | "
                f"{wilson(count['rollback'], args.reps)} | {wilson(undecided, args.reps)} | "
                f"{mean:,.0f} |"
            )
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
