"""Group-sequential paired test: look at the evidence up to K times, stop when it is clear.

A promotion gate that plays a fixed 2,000 episodes wastes most of them on a
candidate that is obviously better or obviously broken; one that simply peeks
after every batch and stops at the first "significant" interval promotes far
more often than its nominal error rate. This module does the peeking honestly:

- looks at equally spaced episode counts n_1 < ... < n_K = max_episodes;
- the error budget alpha = 1 - confidence is spent over the looks with the
  O'Brien-Fleming-type Lan-DeMets function alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)),
  so early looks spend almost nothing and the last look nearly the whole budget;
- look k reports the two-sided Student-t interval of the mean paired difference
  at level 1 - (alpha(t_k) - alpha(t_{k-1})). By the union bound the K intervals
  hold simultaneously with probability >= 1 - alpha, whatever the stopping rule:
  a (discrete) confidence sequence. Slightly conservative (it ignores the
  correlation between looks), never anti-conservative beyond the t approximation.

Stop at look k when the interval lies wholly above the margin (`clears`) or wholly
below it (`falls_short`); after the last look, anything else is `undecided`.
Pure NumPy/SciPy, no I/O; checked by simulation in tests and benchmarks/gate.py.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats

from dispatchloop.evaluation.paired import FloatArray, Interval

Outcome = Literal["clears", "falls_short", "undecided"]


class SequentialDesign(NamedTuple):
    """When to look and how much of the error budget each look may spend."""

    looks: tuple[int, ...]
    """Cumulative paired episodes at each look (the last is the maximum)."""
    alpha: float
    """Total two-sided error budget, 1 - confidence, shared by all looks."""
    spend: tuple[float, ...]
    """Error spent at each look (sums to alpha): its interval has level 1 - spend[k]."""

    @property
    def confidence(self) -> float:
        return 1.0 - self.alpha


class Look(NamedTuple):
    """The evidence at one interim analysis."""

    number: int
    """1-based look number."""
    episodes: int
    """Paired episodes analysed so far."""
    mean: float
    """Mean paired difference (candidate minus champion) so far."""
    ci: Interval
    """Interval of the mean at this look's spent level (simultaneous over looks)."""
    outcome: Outcome
    """`clears` / `falls_short` the margin, or `undecided` (continue if looks remain)."""


class SequentialResult(NamedTuple):
    """Every look taken and where the test stopped."""

    looks: tuple[Look, ...]
    """The looks actually taken, in order (the last one decided or was the last allowed)."""
    design: SequentialDesign
    """The design the looks followed."""
    margin: float
    """What the interval was compared with (the candidate must beat it)."""

    @property
    def final(self) -> Look:
        return self.looks[-1]

    @property
    def outcome(self) -> Outcome:
        return self.final.outcome

    def describe(self) -> str:
        final, planned = self.final, len(self.design.looks)
        stopped = "stopped early at" if final.number < planned else "at"
        return f"{final.episodes} paired episodes, {stopped} look {final.number} of {planned}"


def obrien_fleming_spent(fraction: float, alpha: float) -> float:
    """Cumulative error spent by information fraction t (Lan-DeMets, O'Brien-Fleming type)."""
    if fraction <= 0.0:
        return 0.0
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    return float(min(alpha, 2.0 - 2.0 * stats.norm.cdf(z / math.sqrt(min(fraction, 1.0)))))


def make_design(max_episodes: int, looks: int, confidence: float) -> SequentialDesign:
    """K equally spaced looks up to max_episodes; each look needs at least 2 episodes."""
    if looks < 1:
        raise ValueError(f"need at least one look, got {looks}")
    if max_episodes < 2 * looks:
        raise ValueError(f"{max_episodes} episodes are too few for {looks} looks")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1.0 - confidence
    counts = tuple(math.ceil(max_episodes * k / looks) for k in range(1, looks + 1))
    spent = [obrien_fleming_spent(n / max_episodes, alpha) for n in counts]
    spent[-1] = alpha  # the last look spends whatever is left
    spend = tuple(float(b - a) for a, b in zip([0.0, *spent[:-1]], spent, strict=True))
    return SequentialDesign(counts, alpha, spend)


def analyse_look(diffs: FloatArray, design: SequentialDesign, index: int, margin: float) -> Look:
    """Look `index` (1-based) on the first design.looks[index-1] paired differences."""
    n = design.looks[index - 1]
    if diffs.size < n:
        raise ValueError(f"look {index} needs {n} paired differences, got {diffs.size}")
    sample = np.asarray(diffs[:n], dtype=np.float64)
    if not np.all(np.isfinite(sample)):
        raise ValueError("paired differences must be finite (found NaN or inf)")
    mean = float(sample.mean())
    sem = float(sample.std(ddof=1)) / math.sqrt(n)
    level = design.spend[index - 1]
    critical = float(stats.t.ppf(1.0 - level / 2.0, df=n - 1)) if level > 0 else math.inf
    half = critical * sem if sem > 0 else 0.0
    ci = Interval(mean - half, mean + half)
    outcome: Outcome = "undecided"
    if ci.low > margin:
        outcome = "clears"
    elif ci.high < margin:
        outcome = "falls_short"
    return Look(index, n, mean, ci, outcome)


def sequential_test(diffs: FloatArray, design: SequentialDesign, margin: float) -> SequentialResult:
    """Walk the looks over already computed differences, stopping at the first decided one.

    The gate computes its differences look by look (it plays episodes only when a
    look needs them); this form serves simulations of the design's error rates.
    """
    looks: list[Look] = []
    for index in range(1, len(design.looks) + 1):
        look = analyse_look(diffs, design, index, margin)
        looks.append(look)
        if look.outcome != "undecided":
            break
    return SequentialResult(tuple(looks), design, margin)
