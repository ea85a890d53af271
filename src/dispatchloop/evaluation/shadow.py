"""Live shadow scoring: how would a model have done on the last N logged decisions?

For every incoming logged decision the daemon asks each model it watches (the
champion, the challenger) which driver it would have chosen in the logged
situation. This module keeps, per model, a sliding window of the last `window`
such decisions (by count) and turns it into figures:

- **agreement**: share of decisions where the model would have chosen the
  logged driver, with a Wilson score interval;
- **SNIPS** of the model's deterministic (greedy) policy: weight
  w = 1[model's choice == logged driver] / logged propensity, estimate
  sum(w r) / sum(w) — the same estimator as `offpolicy.py`'s batch SNIPS with a
  one-hot target (tested to agree), per decision (one-step horizon);
  its interval is the **delta-method normal interval** of a ratio estimator,
  var = sum w_i^2 (r_i - V)^2 / (sum w)^2 (Hesterberg 1995; the linearisation
  of the ratio, as for any weighted mean). The estimate and its interval are
  reported only when the ESS reaches `min_ess` (and at least two decisions carry
  weight): below it the normal approximation fails (benchmarks/shadow.py: at an
  ESS of 3-7 the 95 % interval covered the truth in 55-78 % of windows), and
  the ESS alone says why the figure is missing;
- **ESS**: Kish effective sample size (sum w)^2 / sum w^2, the number of
  decisions the SNIPS estimate is worth;
- **the logged policy's realised mean reward** over the same window (normal
  interval): the reference the SNIPS figure is read against.

Decisions logged without a propensity count in the window and in the agreement,
but carry no weight (counted in `excluded`): nothing can be re-weighted without
the logging probability.

The window is a ring buffer of per-decision terms with running sums: O(1)
amortised per decision (the sums are re-added from the buffer once per `window`
additions, so floating-point drift from subtracting evicted terms stays bounded).
Pure NumPy, no I/O; NaN where a figure is undefined (empty window, no weight).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from dispatchloop.evaluation.paired import FloatArray, Interval

DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_ESS = 30.0
NAN_INTERVAL = Interval(math.nan, math.nan)

# Columns of the per-decision terms (their running sums are the window's statistics).
_ONE, _EXCLUDED, _AGREE, _R, _R2, _W, _W2, _WR, _W2R, _W2R2, _WEIGHTED = range(11)
_TERMS = 11


class ShadowSnapshot(NamedTuple):
    """One model's figures over the current window (NaN where undefined)."""

    events: int
    """Decisions in the window (with or without a propensity)."""
    excluded: int
    """Of those, decisions without a propensity (no weight, still in the agreement)."""
    agreement: float
    """Share of decisions where the model would have chosen the logged driver."""
    agreement_ci: Interval
    """Wilson score interval of the agreement."""
    snips: float
    """Self-normalised IPS estimate of the model's mean reward per decision (NaN: ESS too low)."""
    snips_ci: Interval
    """Delta-method normal interval of the SNIPS ratio (NaN with the estimate)."""
    ess: float
    """Kish effective sample size of the weights."""
    logged_mean: float
    """The logged policy's realised mean reward over the same decisions."""
    logged_ci: Interval
    """Normal interval of the logged mean (NaN with < 2 decisions)."""
    confidence: float
    """Level of every interval."""


def decision_terms(
    agree: NDArray[np.bool_], propensities: FloatArray, rewards: FloatArray
) -> FloatArray:
    """(N, terms) per-decision terms; a propensity that is NaN or <= 0 means none was logged."""
    agree_f = np.asarray(agree, dtype=np.float64)
    propensities = np.asarray(propensities, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    has = np.isfinite(propensities) & (propensities > 0)
    weights = np.divide(agree_f, propensities, out=np.zeros_like(agree_f), where=has)
    terms = np.empty((len(agree_f), _TERMS), dtype=np.float64)
    terms[:, _ONE] = 1.0
    terms[:, _EXCLUDED] = ~has
    terms[:, _AGREE] = agree_f
    terms[:, _R] = rewards
    terms[:, _R2] = rewards * rewards
    terms[:, _W] = weights
    terms[:, _W2] = weights * weights
    terms[:, _WR] = weights * rewards
    terms[:, _W2R] = terms[:, _W2] * rewards
    terms[:, _W2R2] = terms[:, _W2R] * rewards
    terms[:, _WEIGHTED] = weights > 0
    return terms


class ShadowWindow:
    """The last `window` decisions of one model, as running sums over a ring buffer."""

    def __init__(
        self, window: int, confidence: float = DEFAULT_CONFIDENCE, min_ess: float = DEFAULT_MIN_ESS
    ) -> None:
        if window < 1:
            raise ValueError(f"the window must hold at least one decision, got {window}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1), got {confidence}")
        self.window = window
        self.confidence = confidence
        self.min_ess = min_ess
        self._z = float(stats.norm.ppf(0.5 + confidence / 2.0))
        self._buffer = np.zeros((window, _TERMS), dtype=np.float64)
        self._sums = np.zeros(_TERMS, dtype=np.float64)
        self._next = 0  # the slot the next decision goes to
        self._since_resum = 0

    def add(self, agree: NDArray[np.bool_], propensities: FloatArray, rewards: FloatArray) -> None:
        """Append decisions in arrival order (oldest first); the oldest beyond the window leave."""
        terms = decision_terms(agree, propensities, rewards)[-self.window :]
        k = len(terms)
        if k == 0:
            return
        slots = (self._next + np.arange(k)) % self.window
        # Slots are written in ring order, so each overwritten slot holds the oldest decision
        # (or zeros while the window is filling): subtracting it is the eviction.
        self._sums += terms.sum(axis=0) - self._buffer[slots].sum(axis=0)
        self._buffer[slots] = terms
        self._next = int((self._next + k) % self.window)
        self._since_resum += k
        if self._since_resum >= self.window:
            self._resum()

    def _resum(self) -> None:
        self._sums = self._buffer.sum(axis=0)  # empty slots are zeros
        self._since_resum = 0

    def snapshot(self) -> ShadowSnapshot:
        """The figures of the decisions now in the window."""
        s = self._sums
        n = round(s[_ONE])
        ess = s[_W] ** 2 / s[_W2] if s[_W2] > 0 else 0.0
        supported = ess >= self.min_ess and round(s[_WEIGHTED]) >= 2
        return ShadowSnapshot(
            events=n,
            excluded=round(s[_EXCLUDED]),
            agreement=s[_AGREE] / n if n else math.nan,
            agreement_ci=wilson_interval(s[_AGREE], n, self._z),
            snips=s[_WR] / s[_W] if supported else math.nan,
            snips_ci=self._snips_interval() if supported else NAN_INTERVAL,
            ess=ess,
            logged_mean=s[_R] / n if n else math.nan,
            logged_ci=self._mean_interval(),
            confidence=self.confidence,
        )

    def _snips_interval(self) -> Interval:
        s = self._sums
        value = s[_WR] / s[_W]
        spread = s[_W2R2] - 2.0 * value * s[_W2R] + value * value * s[_W2]
        half = self._z * math.sqrt(max(spread, 0.0)) / s[_W]
        return Interval(value - half, value + half)

    def _mean_interval(self) -> Interval:
        s = self._sums
        n = round(s[_ONE])
        if n < 2:
            return NAN_INTERVAL
        mean = s[_R] / n
        variance = max(s[_R2] - n * mean * mean, 0.0) / (n - 1)
        half = self._z * math.sqrt(variance / n)
        return Interval(mean - half, mean + half)


def wilson_interval(successes: float, n: int, z: float) -> Interval:
    """Wilson score interval of a proportion (sensible at 0 and 1, unlike the Wald one)."""
    if n == 0:
        return NAN_INTERVAL
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))
