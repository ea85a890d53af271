"""The canary's statistics: realised outcomes of champion- and challenger-served decisions.

A canary gives the challenger a share of live decisions; the daemon then looks at
the outcomes every few minutes for up to a day. Looking again and again at a
fixed-level interval would promote (or roll back) far more often than its
nominal error rate, and a group-sequential design needs the number of looks
fixed in advance, which a daemon (restarts, leader changes, a changed check
interval) cannot promise. So this module uses an **anytime-valid confidence
sequence**: intervals that hold simultaneously at every look, however many and
whenever they happen, so stopping at the first decisive one is honest.

The sequence is the asymptotic confidence sequence of Waudby-Smith, Arbour,
Sinha, Kennedy and Ramdas ("Time-uniform central limit theory and asymptotic
confidence sequences", 2021, Theorem 2.2; Robbins' two-sided normal mixture):
after t observations with estimated per-observation standard deviation sigma,

    radius = sigma * sqrt(2 (t u + 1) / (t^2 u) * log(sqrt(t u + 1) / alpha)),

where u = rho^2 sigma^2 is the mixture's width, chosen so the boundary is
tightest at `planned` observations: u = (-2 log alpha + log(-2 log alpha + 1)) / planned.

The two arms are two independent samples of unequal size (the challenger gets
`traffic_share` of decisions), not pairs. The decisions form one stream of
t = n_champion + n_challenger independently routed decisions; the difference of
the arm means has variance V = s_challenger^2 / n_challenger + s_champion^2 / n_champion,
i.e. per-decision variance sigma^2 = t V (the inverse-propensity form of the
authors' sequential-experiment CS with the share estimated by the arm counts).
Rates use the Agresti-Coull-style variance p(1-p) with p = (k+1)/(n+2), so an arm
with no late booking yet still has an honest, non-zero width.

Three figures are judged (reward per decision, late rate, cancel rate), each at
level alpha/3, so all three intervals hold together with probability >= confidence.
Verdicts: rollback when the reward is shown worse (upper bound < 0) or a guardrail
is shown breached (its rise's lower bound above the margin); promote when the reward
is shown better (lower bound > 0) and no guardrail's observed rise exceeds its margin
(a larger observed rise holds the canary until it is shown breached or expires).
Guardrails on live traffic are breach detectors, not non-inferiority tests: showing a
cancel rate within 1 point on a 10 % share takes far more than a day's decisions, and
the offline gate has already shown non-inferiority in the simulator (its `guardrail.*`
gates); the reward itself charges every late and cancelled booking.
The validity is asymptotic (a CLT, not a finite-sample bound): `min_decisions`
per arm guards the small-sample end; benchmarks/canary.py measures the type-I
error and power under repeated looks. Pure NumPy, no I/O.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.evaluation.paired import FloatArray, Interval
from dispatchloop.events import DecisionRecord, GateResult, Verdict

CanaryVerdict = Literal["promote", "rollback", "continue", "insufficient_evidence"]
FIGURES = ("reward", "late_rate", "cancel_rate")
BoolArray = NDArray[np.bool_]


class CanaryThresholds(NamedTuple):
    """What a canary must show (from settings.loop)."""

    confidence: float
    """Simultaneous confidence of the three intervals over every look (e.g. 0.99)."""
    min_decisions: int
    """Decisions per arm before any verdict (the CLT needs some)."""
    late_margin: float
    """Largest tolerated rise of the challenger's late rate over the champion's."""
    cancel_margin: float
    """Largest tolerated rise of the challenger's cancellation rate."""
    planned_decisions: int
    """Decisions (both arms) at which the sequence's boundary is tightest."""


class ArmOutcomes(NamedTuple):
    """Realised outcomes of the decisions one model made."""

    reward: FloatArray
    """Reward per decision (decisions.reward.event_reward)."""
    late: BoolArray
    """The booking was late."""
    cancelled: BoolArray
    """The booking was cancelled."""

    @property
    def n(self) -> int:
        return len(self.reward)


class ArmTotals(NamedTuple):
    """An arm's outcomes summed: all a look needs, and mergeable, so a daemon adds each
    look's new events to the last look's totals instead of reading the canary again."""

    n: int
    """Decisions."""
    reward_mean: float
    """Mean reward per decision (0 with none)."""
    reward_m2: float
    """Sum of the rewards' squared deviations from their mean."""
    late: int
    """Late bookings."""
    cancelled: int
    """Cancelled bookings."""

    @classmethod
    def of(cls, outcomes: ArmOutcomes) -> ArmTotals:
        """The totals of `outcomes`; the same mean and (n-1) variance as NumPy's, bit for bit
        (np.mean, then the sum of squared deviations, as np.var computes it)."""
        if outcomes.n == 0:
            return NO_OUTCOMES
        mean = float(np.mean(outcomes.reward))
        m2 = float(np.sum((outcomes.reward - mean) ** 2))
        late, cancelled = np.count_nonzero(outcomes.late), np.count_nonzero(outcomes.cancelled)
        return cls(outcomes.n, mean, m2, int(late), int(cancelled))

    def plus(self, other: ArmTotals) -> ArmTotals:
        """The totals of both samples (Chan, Golub and LeVeque's pairwise update, which
        does not lose the variance to cancellation as a running sum of squares would)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.reward_mean - self.reward_mean
        return ArmTotals(
            n,
            self.reward_mean + delta * other.n / n,
            self.reward_m2 + other.reward_m2 + delta * delta * self.n * other.n / n,
            self.late + other.late,
            self.cancelled + other.cancelled,
        )


NO_OUTCOMES = ArmTotals(0, 0.0, 0.0, 0, 0)
"""The totals of an arm with no decision yet."""


class _Sample(NamedTuple):
    """One figure of one arm: observations, their mean, the per-observation variance."""

    n: int
    mean: float
    variance: float


class Difference(NamedTuple):
    """Challenger minus champion for one figure, with its anytime-valid interval."""

    estimate: float
    """Challenger mean minus champion mean (0 with an empty arm)."""
    ci: Interval
    """Confidence-sequence interval at this look (infinite with an empty arm)."""
    champion: float
    """Champion's mean."""
    challenger: float
    """Challenger's mean."""


class CanaryResult(NamedTuple):
    """The verdict of one look, its figures and one sentence per reason."""

    verdict: CanaryVerdict
    """promote, rollback (worse or guardrail breached), continue, or insufficient_evidence."""
    reward: Difference
    """Reward per decision."""
    late_rate: Difference
    """Share of late bookings."""
    cancel_rate: Difference
    """Share of cancelled bookings."""
    n_champion: int
    """Champion-served decisions."""
    n_challenger: int
    """Challenger-served decisions."""
    confidence: float
    """Simultaneous confidence of the three intervals."""
    per_figure_confidence: float
    """Level of each interval (1 - alpha/3)."""
    reasons: tuple[str, ...]
    """Why this verdict, one sentence each."""


def mixture_width(alpha: float, planned: int) -> float:
    """u = rho^2 sigma^2 making the boundary tightest at `planned` observations."""
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log(two_log + 1.0)) / max(planned, 1)


def cs_radius(variance_of_mean: float, t: int, alpha: float, planned: int) -> float:
    """Half-width of the two-sided asymptotic confidence sequence at t observations."""
    if t <= 0 or not math.isfinite(variance_of_mean):
        return math.inf
    u = mixture_width(alpha, planned)
    tu = t * u
    return math.sqrt(variance_of_mean * 2.0 * (tu + 1.0) / tu * math.log(math.sqrt(tu + 1) / alpha))


def difference(champion: _Sample, challenger: _Sample, *, alpha: float, planned: int) -> Difference:
    """Challenger minus champion mean with its confidence-sequence interval."""
    n_a, n_b = champion.n, challenger.n
    if n_a == 0 or n_b == 0:
        return Difference(0.0, Interval(-math.inf, math.inf), champion.mean, challenger.mean)
    variance = champion.variance / n_a + challenger.variance / n_b
    radius = cs_radius(variance, n_a + n_b, alpha, planned)
    estimate = challenger.mean - champion.mean
    return Difference(
        estimate, Interval(estimate - radius, estimate + radius), champion.mean, challenger.mean
    )


def _reward(totals: ArmTotals) -> _Sample:
    n, mean = totals.n, totals.reward_mean
    spread = totals.reward_m2 / (n - 1) if n > 1 else 0.0
    # A constant reward would give a zero width; a tiny floor keeps the interval honest.
    return _Sample(n, mean, max(spread, 1e-12 * (1.0 + mean**2)))


def _rate(n: int, count: int) -> _Sample:
    """A share of bookings with the Agresti-Coull-style variance (never 0, see above)."""
    p = (count + 1.0) / (n + 2.0)
    return _Sample(n, count / n if n else 0.0, p * (1.0 - p))


def judge_canary(
    champion: ArmOutcomes | ArmTotals,
    challenger: ArmOutcomes | ArmTotals,
    thresholds: CanaryThresholds,
    *,
    expired: bool,
) -> CanaryResult:
    """The verdict at this look; `expired`: the canary reached its maximum duration."""
    a, b = _totals(champion), _totals(challenger)
    alpha = (1.0 - thresholds.confidence) / len(FIGURES)
    planned = thresholds.planned_decisions

    def diff(champion_figure: _Sample, challenger_figure: _Sample) -> Difference:
        return difference(champion_figure, challenger_figure, alpha=alpha, planned=planned)

    reward = diff(_reward(a), _reward(b))
    late = diff(_rate(a.n, a.late), _rate(b.n, b.late))
    cancel = diff(_rate(a.n, a.cancelled), _rate(b.n, b.cancelled))
    verdict, reasons = _verdict(a.n, b.n, reward, late, cancel, thresholds, expired)
    return CanaryResult(
        verdict, reward, late, cancel, a.n, b.n, thresholds.confidence, 1.0 - alpha, reasons
    )


def _totals(arm: ArmOutcomes | ArmTotals) -> ArmTotals:
    return arm if isinstance(arm, ArmTotals) else ArmTotals.of(arm)


def _verdict(  # noqa: PLR0917 - the figures of one look
    n_a: int,
    n_b: int,
    reward: Difference,
    late: Difference,
    cancel: Difference,
    thresholds: CanaryThresholds,
    expired: bool,
) -> tuple[CanaryVerdict, tuple[str, ...]]:
    if min(n_a, n_b) < thresholds.min_decisions:
        reason = (
            f"{n_b} challenger and {n_a} champion decisions so far; each arm needs "
            f"{thresholds.min_decisions} before a verdict"
        )
        return ("insufficient_evidence" if expired else "continue"), (reason,)
    margins = {
        "late rate": (late, thresholds.late_margin),
        "cancel rate": (cancel, thresholds.cancel_margin),
    }
    breached = [
        f"the {name} rose by {d.estimate:+.4f} [{d.ci.low:+.4f}, {d.ci.high:+.4f}], "
        f"beyond the tolerated {margin:g}"
        for name, (d, margin) in margins.items()
        if d.ci.low > margin
    ]
    if reward.ci.high < 0.0:
        breached.append(
            f"reward per decision is worse by {-reward.estimate:.4g} "
            f"[{reward.ci.low:+.4g}, {reward.ci.high:+.4g}]"
        )
    if breached:
        return "rollback", tuple(breached)
    risen = [
        f"the {name}'s observed rise {d.estimate:+.4f} [{d.ci.low:+.4f}, {d.ci.high:+.4f}] "
        f"exceeds its margin {margin:g} (not yet shown)"
        for name, (d, margin) in margins.items()
        if d.estimate > margin
    ]
    if reward.ci.low > 0.0 and not risen:
        return "promote", (
            f"reward per decision is better by {reward.estimate:.4g} "
            f"[{reward.ci.low:+.4g}, {reward.ci.high:+.4g}] and no guardrail rose beyond "
            "its margin",
        )
    open_ = "; ".join(risen) or (
        f"the reward difference {reward.estimate:+.4g} "
        f"[{reward.ci.low:+.4g}, {reward.ci.high:+.4g}] still includes 0"
    )
    if expired:
        return "insufficient_evidence", (f"the canary reached its maximum duration: {open_}",)
    return "continue", (open_,)


RECORD_VERDICTS: dict[CanaryVerdict, Verdict] = {
    "promote": "promote",
    "rollback": "reject",
    "insufficient_evidence": "insufficient_evidence",
}


def canary_record(
    result: CanaryResult,
    *,
    challenger: str,
    champion: str,
    thresholds: CanaryThresholds,
    started_at: datetime,
    now: datetime,
) -> DecisionRecord:
    """The decision record (kind `canary`) of a decisive look; `continue` has none."""
    if result.verdict == "continue":
        raise ValueError("a canary that continues has no decision record yet")
    enough = min(result.n_champion, result.n_challenger) >= thresholds.min_decisions
    counts = (
        f"{result.n_challenger} challenger vs {result.n_champion} champion decisions "
        f"since {started_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    gates = (
        _gate("canary.reward", result.reward, 0.0, higher_is_better=True, enough=enough,
              counts=counts, confidence=result.per_figure_confidence),
        _gate("canary.late_rate", result.late_rate, thresholds.late_margin,
              higher_is_better=False, enough=enough, counts=counts,
              confidence=result.per_figure_confidence),
        _gate("canary.cancel_rate", result.cancel_rate, thresholds.cancel_margin,
              higher_is_better=False, enough=enough, counts=counts,
              confidence=result.per_figure_confidence),
    )  # fmt: skip
    return DecisionRecord(
        record_id=str(uuid.uuid4()),
        candidate=challenger,
        champion=champion,
        verdict=RECORD_VERDICTS[result.verdict],
        gates=gates,
        reasons=result.reasons,
        scenario=None,
        seeds="none",
        metrics={
            f"canary_{name}_delta": getattr(result, name).estimate
            for name in FIGURES
            if math.isfinite(getattr(result, name).estimate)
        },
        kind="canary",
        created_at=now,
    )


def _gate(
    name: str,
    diff: Difference,
    threshold: float,
    *,
    higher_is_better: bool,
    enough: bool,
    counts: str,
    confidence: float,
) -> GateResult:
    low, high = diff.ci
    passed: bool | None
    if not enough:
        passed, verdict = None, "too few decisions to judge"
    elif higher_is_better:
        passed = True if low > threshold else (False if high < threshold else None)
        verdict = {True: "better", False: "worse", None: "undecided"}[passed]
    elif low > threshold:
        passed, verdict = False, "shown to rise beyond the margin"
    elif diff.estimate > threshold:
        passed, verdict = None, "observed rise beyond the margin, not yet shown"
    else:
        within = "within the margin" if high <= threshold else "no rise beyond the margin seen"
        passed, verdict = True, within
    finite = math.isfinite(low) and math.isfinite(high)
    return GateResult(
        name=name,
        passed=passed,
        value=diff.estimate if finite else None,
        ci=(low, high) if finite else None,
        confidence=confidence,
        threshold=threshold,
        detail=f"challenger {diff.challenger:.4g} vs champion {diff.champion:.4g} "
        f"({verdict}): {counts}",
    )
