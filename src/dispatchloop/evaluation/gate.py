"""The promotion gate: evidence in, one `DecisionRecord` out, every verdict with its reasons.

`decide(evidence, thresholds)` is pure: it reads what the judge measured
(evaluation/judge.py) and turns each piece into a `GateResult`:

- `candidate.sane`: the candidate played every episode and gave finite
  probabilities on probe situations (a NaN or diverged network fails here);
- `paired_sim`: the group-sequential paired test on TEST episodes; passes when
  the simultaneous lower bound of candidate minus champion (reward per episode)
  clears `reward_margin`, fails when the upper bound is below it;
- `guardrail.<figure>` for late rate, cancellation rate, mean pickup delay and
  empty km (lower is better): passes when the upper bound of the rise is below
  its margin (non-inferiority shown), fails when the observed rise exceeds it,
  is undecided in between;
- `ope.snips`, `ope.dr`: off-policy estimates of candidate minus champion on the
  logged events; undecided when there are no usable logs or support is thin,
  failed when the upper bound is below zero (the logs contradict the simulator).

Verdict: `reject` if any gate failed; `promote` if the sanity, paired and guardrail
gates all passed (off-policy gates passed or undecided: thin support is reported,
never counted as a pass); otherwise `insufficient_evidence`. Every failed or
undecided gate adds one sentence to `reasons`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple

from dispatchloop.evaluation.offpolicy import OffPolicyComparison, PolicyEstimates
from dispatchloop.evaluation.paired import Interval
from dispatchloop.evaluation.sequential import SequentialResult
from dispatchloop.events import DecisionRecord, GateResult, ScenarioRef, Verdict
from dispatchloop.settings import GateSettings

GUARDRAIL_UNITS = {
    "late_rate": "of bookings",
    "cancel_rate": "of bookings",
    "mean_pickup_delay": "min",
    "empty_km": "km per episode",
}
OPE_GATES = ("snips", "dr")


class GateThresholds(NamedTuple):
    """What a candidate must show; built from `GateSettings` by the caller, never read here."""

    confidence: float
    """Simultaneous confidence of the paired intervals over all looks."""
    reward_margin: float
    """The paired lower bound (reward per episode) must exceed this."""
    looks: int
    """Interim analyses of the sequential design."""
    max_episodes: int
    """Paired TEST episodes at the last look."""
    guardrail_margins: dict[str, float]
    """Largest tolerated rise of each guardrail figure, in its unit."""
    ope_min_ess: float
    """Smallest Kish ESS for an off-policy verdict."""
    ope_max_top_share: float
    """Largest share of weight in the top 1 % of decisions for a verdict."""
    ope_max_unsupported: float
    """Largest target probability share on never-logged actions for a verdict."""
    ope_bootstrap: int
    """Bootstrap resamples of the off-policy intervals."""

    @classmethod
    def from_settings(cls, gate: GateSettings) -> GateThresholds:
        return cls(
            confidence=gate.confidence,
            reward_margin=gate.reward_margin,
            looks=gate.looks,
            max_episodes=gate.max_episodes,
            guardrail_margins={
                "late_rate": gate.late_rate_margin,
                "cancel_rate": gate.cancel_rate_margin,
                "mean_pickup_delay": gate.pickup_delay_margin_min,
                "empty_km": gate.empty_km_margin,
            },
            ope_min_ess=gate.ope_min_ess,
            ope_max_top_share=gate.ope_max_top_share,
            ope_max_unsupported=gate.ope_max_unsupported,
            ope_bootstrap=gate.ope_bootstrap,
        )


class Guardrail(NamedTuple):
    """Candidate minus champion of one lower-is-better figure, on the paired episodes."""

    name: str
    """`late_rate`, `cancel_rate`, `mean_pickup_delay` or `empty_km`."""
    rise: float
    """Mean paired difference (positive: the candidate is worse)."""
    ci: Interval
    """Interval of the rise at the paired test's final-look level."""
    champion_mean: float
    """The champion's mean of the figure, for context."""


class Sanity(NamedTuple):
    """Did the candidate behave like a policy at all?"""

    passed: bool
    """False if it crashed, chose a masked driver, or gave non-finite probabilities."""
    detail: str
    """One sentence: what was checked, or what went wrong."""


class Evidence(NamedTuple):
    """Everything the judge measured about one candidate (input of `decide`)."""

    record_id: str
    """Id of the record to write (a UUID string)."""
    created_at: datetime
    """When the judgement was made (UTC)."""
    candidate: str
    """Version or directory name of the candidate."""
    champion: str | None
    """Version, directory name, or `greedy`."""
    sanity: Sanity
    """The candidate's sanity check."""
    paired: SequentialResult | None
    """The sequential paired test; None when the candidate could not play."""
    guardrails: tuple[Guardrail, ...]
    """One per guardrail figure (empty when the candidate could not play)."""
    ope: OffPolicyComparison | None
    """Off-policy comparison; None when there were no usable logs (`ope_note` says why)."""
    ope_note: str
    """Why there is no off-policy comparison, or a note on the logs used."""
    scenario: ScenarioRef | None
    """The simulated world of the paired test."""


def decide(evidence: Evidence, thresholds: GateThresholds) -> DecisionRecord:
    """The decision record of one judgement (see the module docstring for the rules)."""
    gates = [_sanity_gate(evidence.sanity), _paired_gate(evidence.paired, thresholds)]
    gates += [_guardrail_gate(g, evidence.paired, thresholds) for g in evidence.guardrails]
    gates += _ope_gates(evidence, thresholds)
    verdict = _verdict(gates)
    reasons = [_reason(gate) for gate in gates if gate.passed is not True]
    if not reasons:
        reasons = [f"all {len(gates)} gates passed"]
    return DecisionRecord(
        record_id=evidence.record_id,
        candidate=evidence.candidate,
        champion=evidence.champion,
        verdict=verdict,
        gates=tuple(gates),
        reasons=tuple(reasons),
        scenario=evidence.scenario,
        seeds="TEST",
        metrics=_metrics(evidence),
        kind="gate",
        created_at=evidence.created_at,
    )


def _verdict(gates: list[GateResult]) -> Verdict:
    if any(gate.passed is False for gate in gates):
        return "reject"
    required = [gate for gate in gates if not gate.name.startswith("ope.")]
    if required and all(gate.passed is True for gate in required):
        return "promote"
    return "insufficient_evidence"


def _reason(gate: GateResult) -> str:
    state = "failed" if gate.passed is False else "undecided"
    return f"{gate.name} {state}: {gate.detail}"


def _sanity_gate(sanity: Sanity) -> GateResult:
    return GateResult(name="candidate.sane", passed=sanity.passed, detail=sanity.detail)


def _paired_gate(paired: SequentialResult | None, thresholds: GateThresholds) -> GateResult:
    if paired is None:
        return GateResult(
            name="paired_sim",
            passed=None,
            threshold=thresholds.reward_margin,
            detail="no paired episodes: the candidate could not play them",
        )
    final = paired.final
    where = paired.describe()
    verdicts = {
        "clears": (True, f"{where}; the lower bound clears the margin"),
        "falls_short": (False, f"{where}; the upper bound is below the margin"),
        "undecided": (None, f"{where}; the interval straddles the margin (more episodes needed)"),
    }
    passed, sentence = verdicts[final.outcome]
    return GateResult(
        name="paired_sim",
        passed=passed,
        value=final.mean,
        ci=(final.ci.low, final.ci.high),
        confidence=paired.design.confidence,
        threshold=thresholds.reward_margin,
        detail=f"candidate minus champion reward per episode {final.mean:+.3f} "
        f"[{final.ci.low:+.3f}, {final.ci.high:+.3f}], {sentence}",
    )


def _guardrail_gate(
    guardrail: Guardrail, paired: SequentialResult | None, thresholds: GateThresholds
) -> GateResult:
    margin = thresholds.guardrail_margins[guardrail.name]
    unit = GUARDRAIL_UNITS[guardrail.name]
    low, high = guardrail.ci
    passed: bool | None
    if high < margin:
        passed, verdict = True, "the upper bound is within the margin"
    elif guardrail.rise > margin:
        passed, verdict = False, "the candidate regresses beyond the margin"
    else:
        passed, verdict = None, "the interval reaches past the margin (non-inferiority not shown)"
    confidence = paired.design.confidence if paired is not None else thresholds.confidence
    return GateResult(
        name=f"guardrail.{guardrail.name}",
        passed=passed,
        value=guardrail.rise,
        ci=(low, high),
        confidence=confidence,
        threshold=margin,
        detail=f"rise {guardrail.rise:+.4g} {unit} [{low:+.4g}, {high:+.4g}] against a margin "
        f"of {margin:g} (champion {guardrail.champion_mean:.4g}): {verdict}",
    )


def support_problem(estimates: PolicyEstimates, thresholds: GateThresholds) -> str | None:
    """Why the logs cannot speak about this policy, or None when support is adequate."""
    support = estimates.support
    if support.ess < thresholds.ope_min_ess:
        return f"ESS {support.ess:.0f} < {thresholds.ope_min_ess:g}"
    if support.top_share > thresholds.ope_max_top_share:
        return (
            f"the top 1 % of decisions carry {support.top_share:.0%} of the weight "
            f"(> {thresholds.ope_max_top_share:.0%})"
        )
    if support.unsupported_share > thresholds.ope_max_unsupported:
        return (
            f"{support.unsupported_share:.1%} of the policy's probability is on actions the "
            f"logger never takes (> {thresholds.ope_max_unsupported:.1%})"
        )
    return None


def _ope_gates(evidence: Evidence, thresholds: GateThresholds) -> list[GateResult]:
    ope = evidence.ope
    if ope is None:
        return [
            GateResult(
                name=f"ope.{key}",
                passed=None,
                detail=f"no off-policy estimate: {evidence.ope_note}",
            )
            for key in OPE_GATES
        ]
    problems = [
        f"{role}: {problem}"
        for role, estimates in (("candidate", ope.candidate), ("champion", ope.champion))
        if (problem := support_problem(estimates, thresholds)) is not None
    ]
    used = (
        f"{ope.candidate.support.decisions} logged decisions ({ope.excluded} without "
        f"propensity excluded), {ope.horizon}"
    )
    gates: list[GateResult] = []
    for key in OPE_GATES:
        estimate = ope.difference[key]
        low, high = estimate.ci
        if not all(math.isfinite(v) for v in (estimate.value, low, high)):
            detail = f"not estimable on {used} (the weights sum to zero in some resamples)"
            gates.append(GateResult(name=f"ope.{key}", passed=None, detail=detail))
            continue
        if problems:
            passed, verdict = None, "insufficient support: " + "; ".join(problems)
        elif high < 0.0:
            passed, verdict = False, "the logs contradict the simulator (upper bound below zero)"
        else:
            passed, verdict = True, "the logs do not contradict the simulator"
        gates.append(
            GateResult(
                name=f"ope.{key}",
                passed=passed,
                value=estimate.value,
                ci=(low, high),
                confidence=ope.confidence,
                threshold=0.0,
                detail=f"candidate minus champion reward per decision {estimate.value:+.4f} "
                f"[{low:+.4f}, {high:+.4f}] on {used}: {verdict}",
            )
        )
    return gates


def _metrics(evidence: Evidence) -> dict[str, float]:
    """Headline figures the promotion event copies (finite values only)."""
    metrics: dict[str, float] = {}
    if evidence.paired is not None:
        final = evidence.paired.final
        metrics |= {
            "sim_reward_delta": final.mean,
            "sim_reward_delta_low": final.ci.low,
            "sim_reward_delta_high": final.ci.high,
            "sim_episodes": float(final.episodes),
            "sim_looks": float(final.number),
        }
    for guardrail in evidence.guardrails:
        metrics[f"{guardrail.name}_delta"] = guardrail.rise
    if evidence.ope is not None:
        for key in OPE_GATES:
            metrics[f"ope_{key}_delta"] = evidence.ope.difference[key].value
        metrics["ope_candidate_ess"] = evidence.ope.candidate.support.ess
        metrics["ope_excluded_events"] = float(evidence.ope.excluded)
    return {key: value for key, value in metrics.items() if math.isfinite(value)}
