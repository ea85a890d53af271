"""Statistics of paired per-seed results: the arithmetic behind every A/B verdict.

Every policy is run on the same seeded episodes, so episode i of policy A and
episode i of policy B saw the same bookings and fleet. Comparing them seed by
seed (a paired difference) removes the episode-to-episode noise that dominates
the raw returns; that is why a promotion gate asks for the paired 99 % interval
to sit above zero rather than for two overlapping per-policy intervals.

Pure NumPy/SciPy, no I/O: unit-tested against scipy.stats with known answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import stats

DEFAULT_CONFIDENCE = 0.99
DEFAULT_BOOTSTRAP_SAMPLES = 4_000
FloatArray = NDArray[np.float64]


class Interval(NamedTuple):
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def above(self, value: float) -> bool:
        """The whole interval lies strictly above `value` (e.g. a win over zero)."""
        return self.low > value


class Summary(NamedTuple):
    """Mean of per-episode values with its Student-t confidence interval."""

    n: int
    mean: float
    std: float
    ci: Interval


class PairedDifference(NamedTuple):
    """Mean of (policy - baseline) over the same seeds, with its t interval."""

    n: int
    mean_diff: float
    std_diff: float
    ci: Interval


class GapShare(NamedTuple):
    """(policy - low) / (high - low) of the means, with a paired bootstrap interval.

    `share` is None when low and high have the same mean (no gap to close).
    The interval is None when the gap vanishes in too many bootstrap resamples
    for a percentile interval to mean anything.
    """

    share: float | None
    ci: Interval | None


def as_values(values: Sequence[float] | FloatArray) -> FloatArray:
    """One-dimensional float64 array of finite values, or ValueError saying why not."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"expected one value per episode, got shape {array.shape}")
    if array.size < 2:
        raise ValueError(f"need at least 2 episodes for an interval, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise ValueError("per-episode values must be finite (found NaN or inf)")
    return array


def t_interval(
    values: Sequence[float] | FloatArray, confidence: float = DEFAULT_CONFIDENCE
) -> Interval:
    """Student-t interval of the mean (two-sided); collapses to the mean at zero spread."""
    array = as_values(values)
    _check_confidence(confidence)
    mean = float(array.mean())
    sem = float(array.std(ddof=1)) / math.sqrt(array.size)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=array.size - 1)) * sem
    return Interval(mean - half, mean + half)


def summarize(
    values: Sequence[float] | FloatArray, confidence: float = DEFAULT_CONFIDENCE
) -> Summary:
    """Mean, sample std (ddof=1) and t interval of one policy's per-episode values."""
    array = as_values(values)
    return Summary(
        n=int(array.size),
        mean=float(array.mean()),
        std=float(array.std(ddof=1)),
        ci=t_interval(array, confidence),
    )


def paired_difference(
    values: Sequence[float] | FloatArray,
    baseline: Sequence[float] | FloatArray,
    confidence: float = DEFAULT_CONFIDENCE,
) -> PairedDifference:
    """Seed-by-seed difference policy - baseline; both must cover the same seeds in order."""
    diff = _paired(values, baseline)
    return PairedDifference(
        n=int(diff.size),
        mean_diff=float(diff.mean()),
        std_diff=float(diff.std(ddof=1)),
        ci=t_interval(diff, confidence),
    )


def gap_share(
    values: Sequence[float] | FloatArray,
    low: Sequence[float] | FloatArray,
    high: Sequence[float] | FloatArray,
    rng: np.random.Generator,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_bootstrap: int = DEFAULT_BOOTSTRAP_SAMPLES,
) -> GapShare:
    """Share of the low→high gap a policy closes, e.g. DQN between greedy and hindsight.

    The interval resamples whole seeds (all three policies together, so the
    pairing survives) and takes percentiles of the ratio of means: a ratio has
    no t interval, and the bootstrap needs no distributional assumption.
    """
    policy, lows, highs = _same_seeds(values, low, high)
    _check_confidence(confidence)
    gap = float(highs.mean() - lows.mean())
    if gap == 0.0:
        return GapShare(None, None)
    share = float(policy.mean() - lows.mean()) / gap
    index = rng.integers(0, policy.size, size=(n_bootstrap, policy.size))
    boot_gap = highs[index].mean(axis=1) - lows[index].mean(axis=1)
    usable = np.abs(boot_gap) > 1e-12
    if usable.mean() < confidence:
        return GapShare(share, None)
    ratios = (policy[index].mean(axis=1) - lows[index].mean(axis=1))[usable] / boot_gap[usable]
    tail = (1.0 - confidence) / 2.0
    low_q, high_q = np.quantile(ratios, [tail, 1.0 - tail])
    return GapShare(share, Interval(float(low_q), float(high_q)))


def _paired(
    values: Sequence[float] | FloatArray, baseline: Sequence[float] | FloatArray
) -> FloatArray:
    a, b = _same_seeds(values, baseline)
    return a - b


def _same_seeds(*series: Sequence[float] | FloatArray) -> list[FloatArray]:
    arrays = [as_values(values) for values in series]
    sizes = sorted({array.size for array in arrays})
    if len(sizes) > 1:
        raise ValueError(f"paired results must cover the same episodes, got sizes {sizes}")
    return arrays


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
