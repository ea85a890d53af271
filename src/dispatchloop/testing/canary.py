"""Synthetic canaries for the statistics' tests and benchmarks/canary.py (seeded).

A stream of decisions is routed to the challenger with probability `share`; each
outcome is late or cancelled with its arm's rate, and its reward follows the shape
of decisions.reward (a cost around 8 with spread 4, minus the late and cancel
penalties of the default RewardSettings). The daemon's loop is imitated: a look
every `every` decisions, stop at the first decisive verdict, expire at `total`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dispatchloop.evaluation.canary import (
    ArmOutcomes,
    CanaryThresholds,
    CanaryVerdict,
    judge_canary,
)

LATE_PENALTY, CANCEL_PENALTY = 5.0, 20.0


class Arm(NamedTuple):
    """One model's outcome distribution."""

    base_mean: float = -8.0
    """Mean reward before penalties."""
    late: float = 0.10
    """Late rate."""
    cancel: float = 0.03
    """Cancellation rate."""


class Run(NamedTuple):
    """How one synthetic canary ended."""

    verdict: CanaryVerdict
    """The final verdict (insufficient_evidence when it expired)."""
    looks: int
    """Looks taken."""
    decisions: int
    """Decisions (both arms) at the end."""


def outcomes(rng: np.random.Generator, arm: Arm, n: int) -> ArmOutcomes:
    """n decisions' outcomes of one arm."""
    late = rng.random(n) < arm.late
    cancelled = ~late & (rng.random(n) < arm.cancel)
    reward = rng.normal(arm.base_mean, 4.0, n) - LATE_PENALTY * late - CANCEL_PENALTY * cancelled
    return ArmOutcomes(reward, late, cancelled)


def run_canary(
    rng: np.random.Generator,
    champion: Arm,
    challenger: Arm,
    thresholds: CanaryThresholds,
    *,
    share: float = 0.1,
    every: int = 500,
    total: int = 20_000,
) -> Run:
    """Look every `every` decisions; stop at the first promote/rollback or at `total`."""
    to_challenger = rng.random(total) < share
    n_b = int(to_challenger.sum())
    a, b = outcomes(rng, champion, total - n_b), outcomes(rng, challenger, n_b)
    seen_b = np.cumsum(to_challenger)
    looks = 0
    for end in range(every, total + 1, every):
        looks += 1
        k_b = int(seen_b[end - 1])
        k_a = end - k_b
        result = judge_canary(
            _head(a, k_a),
            _head(b, k_b),
            thresholds,
            expired=end + every > total,
        )
        if result.verdict != "continue":
            return Run(result.verdict, looks, end)
    return Run("insufficient_evidence", looks, total)


def _head(arm: ArmOutcomes, n: int) -> ArmOutcomes:
    return ArmOutcomes(arm.reward[:n], arm.late[:n], arm.cancelled[:n])
