"""The demo's figures: live decisions of promoted models against greedy's, in the same run.

Arrays in, NamedTuples out, no I/O (like `evaluation/paired.py`).

Why an episode-clustered interval: realised rewards of one simulated shift are
correlated (the fleet's state carries from booking to booking), so a per-decision
Welch interval would be too narrow. Episodes are independent draws of the world
given the policy, so each arm's mean is a ratio estimator (sum of rewards over
decisions) with a cluster-robust standard error over its episodes, and the
difference gets a Welch–Satterthwaite t interval. An episode cut by a promotion
contributes one partial cluster to each side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from dispatchloop.evaluation.paired import Interval

CONFIDENCE = 0.99
FloatArray = NDArray[np.float64]


class ArmMean(NamedTuple):
    """Mean realised reward per decision of one arm, with its episode-clustered error."""

    mean: float
    se: float
    """Cluster-robust standard error of `mean` (clusters: episodes)."""
    decisions: int
    clusters: int


class LiveVsGreedy(NamedTuple):
    """Live (promoted models) minus greedy, mean reward per decision, with its interval."""

    mean_diff: float
    ci: Interval
    df: float
    """Welch–Satterthwaite degrees of freedom of the t interval."""
    live: ArmMean
    greedy: ArmMean


class GapClosed(NamedTuple):
    """(live − greedy) / (hindsight − greedy) per decision; `ci` scales the difference's
    interval by the simulated gap (the gap's own error, from paired episodes, is ignored)."""

    share: float
    ci: Interval


class PromotionCheck(NamedTuple):
    """The paired simulator test behind one promotion (from its decision record)."""

    version: str
    predecessor: str | None
    """The version (or `greedy`) it was judged against."""
    value: float | None
    """Candidate minus predecessor, mean reward per TEST episode; None if no paired test."""
    ci: tuple[float, float] | None


def arm_mean(rewards: FloatArray, clusters: Sequence[str] | NDArray[np.str_]) -> ArmMean:
    """Ratio mean of `rewards` with a cluster-robust (CR1) standard error."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size == 0:
        raise ValueError("an arm needs at least one decision")
    _labels, index = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(index, weights=rewards)
    counts = np.bincount(index).astype(np.float64)
    mean = float(sums.sum() / counts.sum())
    k = len(sums)
    if k < 2:
        return ArmMean(mean, math.inf, int(rewards.size), k)
    residuals = sums - mean * counts
    variance = k / (k - 1) * float(np.sum(residuals**2)) / float(counts.sum()) ** 2
    return ArmMean(mean, math.sqrt(variance), int(rewards.size), k)


def live_vs_greedy(live: ArmMean, greedy: ArmMean, confidence: float = CONFIDENCE) -> LiveVsGreedy:
    """Welch t interval of the difference of two independent clustered means."""
    diff = live.mean - greedy.mean
    v_live, v_greedy = live.se**2, greedy.se**2
    if not (math.isfinite(v_live) and math.isfinite(v_greedy)) or v_live + v_greedy == 0:
        return LiveVsGreedy(diff, Interval(-math.inf, math.inf), 0.0, live, greedy)
    df = (v_live + v_greedy) ** 2 / (
        v_live**2 / max(live.clusters - 1, 1) + v_greedy**2 / max(greedy.clusters - 1, 1)
    )
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(v_live + v_greedy)
    return LiveVsGreedy(diff, Interval(diff - half, diff + half), df, live, greedy)


def gap_closed(difference: LiveVsGreedy, greedy_level: float, hindsight_level: float) -> GapClosed:
    """Share of the greedy→hindsight gap (per decision) the live decisions closed."""
    gap = hindsight_level - greedy_level
    if gap <= 0:
        raise ValueError(f"hindsight ({hindsight_level:.3f}) does not beat greedy here")
    low, high = difference.ci
    return GapClosed(difference.mean_diff / gap, Interval(low / gap, high / gap))


def is_worse(check: PromotionCheck) -> bool:
    """Worse than its predecessor: no paired test, or its point estimate below zero."""
    return check.value is None or check.value < 0


def worse_promotions(checks: Sequence[PromotionCheck]) -> int:
    return sum(is_worse(check) for check in checks)


def rolling_mean(values: FloatArray, window: int) -> FloatArray:
    """Trailing mean over up to `window` values (shorter at the start)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    means: FloatArray = (cumulative[ends] - cumulative[starts]) / (ends - starts)
    return means
