"""From per-seed results of several policies to one A/B report (JSON and a table).

Input is plain arrays: for each policy, one value per seeded episode for the
return and for each guardrail (late rate, cancellation rate, ...), all policies
on the same seeds in the same order. The report pairs every policy against a
baseline and, where a low and a high reference are present (greedy and
hindsight), says what share of the gap between them a policy closes. Keeping
this pure means the simulator path, the Gymnasium path and the promotion gate
all judge with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dispatchloop.evaluation.paired import (
    DEFAULT_CONFIDENCE,
    FloatArray,
    GapShare,
    Interval,
    PairedDifference,
    Summary,
    gap_share,
    paired_difference,
    summarize,
)

RETURN = "return"
"""The metric every policy is judged on: the episode's summed shared reward."""

PolicyRuns = Mapping[str, Mapping[str, FloatArray]]
"""policy name -> metric name -> one value per episode (same seeds for every policy)."""


@dataclass(frozen=True)
class GapReference:
    """Which policies bound the gap: share = (policy - low) / (high - low)."""

    low: str = "greedy"
    high: str = "hindsight"


@dataclass(frozen=True)
class PolicyReport:
    summary: Summary
    guardrails: dict[str, Summary] = field(default_factory=dict)


@dataclass(frozen=True)
class PairedReport:
    vs: str
    difference: PairedDifference
    guardrails: dict[str, PairedDifference] = field(default_factory=dict)
    gap: GapShare | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """Everything `dispatchloop evaluate` prints; `to_json` is its stable shape."""

    environment: str
    seeds: tuple[int, ...]
    baseline: str
    confidence: float
    policies: dict[str, PolicyReport]
    paired: dict[str, PairedReport]
    gap_reference: GapReference | None

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "episodes": len(self.seeds),
            "seeds": {"first": self.seeds[0], "last": self.seeds[-1]},
            "baseline": self.baseline,
            "confidence": self.confidence,
            "policies": {name: _policy_json(p) for name, p in self.policies.items()},
            "paired": {name: self._paired_json(p) for name, p in self.paired.items()},
        }

    def _paired_json(self, paired: PairedReport) -> dict[str, Any]:
        data: dict[str, Any] = {
            "vs": paired.vs,
            "mean_diff": paired.difference.mean_diff,
            "ci99": _interval_json(paired.difference.ci),
            "significant": paired.difference.ci.above(0.0) or paired.difference.ci.high < 0.0,
        }
        if paired.guardrails:
            data["guardrails"] = {
                name: {"mean_diff": diff.mean_diff, "ci99": _interval_json(diff.ci)}
                for name, diff in paired.guardrails.items()
            }
        if paired.gap is not None and self.gap_reference is not None:
            data["gap_share"] = {
                "low": self.gap_reference.low,
                "high": self.gap_reference.high,
                "share": paired.gap.share,
                "ci99": None if paired.gap.ci is None else _interval_json(paired.gap.ci),
            }
        return data


def build_report(
    runs: PolicyRuns,
    *,
    environment: str,
    seeds: Sequence[int],
    baseline: str,
    rng: np.random.Generator,
    gap_policies: Sequence[str] = (),
    gap_reference: GapReference = GapReference(),
    confidence: float = DEFAULT_CONFIDENCE,
) -> EvaluationReport:
    """Summaries per policy, paired differences vs `baseline`, gap shares for `gap_policies`.

    The gap share is computed only when both references were run: without
    hindsight there is no ceiling to measure a share of.
    """
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not among the evaluated policies")
    _check_lengths(runs, len(seeds))
    has_gap = gap_reference.low in runs and gap_reference.high in runs
    policies = {name: _policy_report(metrics, confidence) for name, metrics in runs.items()}
    paired = {
        name: _paired_report(
            runs,
            name,
            baseline,
            rng=rng,
            reference=gap_reference if has_gap and name in gap_policies else None,
            confidence=confidence,
        )
        for name in runs
        if name != baseline
    }
    return EvaluationReport(
        environment=environment,
        seeds=tuple(int(seed) for seed in seeds),
        baseline=baseline,
        confidence=confidence,
        policies=policies,
        paired=paired,
        gap_reference=gap_reference if has_gap else None,
    )


def _check_lengths(runs: PolicyRuns, n_seeds: int) -> None:
    for name, metrics in runs.items():
        if RETURN not in metrics:
            raise ValueError(f"policy {name!r} has no {RETURN!r} values")
        for metric, values in metrics.items():
            if len(values) != n_seeds:
                raise ValueError(
                    f"policy {name!r} has {len(values)} {metric} values for {n_seeds} seeds"
                )


def _policy_report(metrics: Mapping[str, FloatArray], confidence: float) -> PolicyReport:
    guardrails = {
        name: summarize(values, confidence) for name, values in metrics.items() if name != RETURN
    }
    return PolicyReport(summarize(metrics[RETURN], confidence), guardrails)


def _paired_report(
    runs: PolicyRuns,
    name: str,
    baseline: str,
    *,
    rng: np.random.Generator,
    reference: GapReference | None,
    confidence: float,
) -> PairedReport:
    mine, theirs = runs[name], runs[baseline]
    guardrails = {
        metric: paired_difference(values, theirs[metric], confidence)
        for metric, values in mine.items()
        if metric != RETURN and metric in theirs
    }
    gap = None
    if reference is not None:
        gap = gap_share(
            mine[RETURN],
            runs[reference.low][RETURN],
            runs[reference.high][RETURN],
            rng,
            confidence=confidence,
        )
    return PairedReport(
        baseline, paired_difference(mine[RETURN], theirs[RETURN], confidence), guardrails, gap
    )


def _policy_json(report: PolicyReport) -> dict[str, Any]:
    summary = report.summary
    data: dict[str, Any] = {
        "mean": summary.mean,
        "std": summary.std,
        "ci99": _interval_json(summary.ci),
    }
    if report.guardrails:
        data["guardrails"] = {
            name: {"mean": g.mean, "ci99": _interval_json(g.ci)}
            for name, g in report.guardrails.items()
        }
    return data


def _interval_json(interval: Interval) -> list[float]:
    return [interval.low, interval.high]


def render_table(report: EvaluationReport) -> str:
    """A fixed-width table for people; the same figures as `to_json`."""
    guardrail_names = list(dict.fromkeys(g for p in report.policies.values() for g in p.guardrails))
    pct = round(report.confidence * 100)
    header = [
        "policy",
        "mean return",
        f"{pct}% CI",
        f"diff vs {report.baseline}",
        f"{pct}% CI (paired)",
        *guardrail_names,
        "gap closed",
    ]
    rows = [header]
    for name, policy in report.policies.items():
        paired = report.paired.get(name)
        rows.append(
            [
                name,
                f"{policy.summary.mean:.2f}",
                _fmt_interval(policy.summary.ci),
                "—" if paired is None else f"{paired.difference.mean_diff:+.2f}",
                "—" if paired is None else _fmt_interval(paired.difference.ci, signed=True),
                *[_fmt_guardrail(policy, g) for g in guardrail_names],
                _fmt_gap(paired),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [_join(row, widths) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    title = (
        f"{report.environment}: {len(report.seeds)} paired episodes "
        f"(seeds {report.seeds[0]}..{report.seeds[-1]})"
    )
    return "\n".join([title, *lines])


def _join(row: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def _fmt_interval(interval: Interval, signed: bool = False) -> str:
    spec = "+.2f" if signed else ".2f"
    return f"[{interval.low:{spec}}, {interval.high:{spec}}]"


def _fmt_guardrail(policy: PolicyReport, name: str) -> str:
    summary = policy.guardrails.get(name)
    return "—" if summary is None else f"{summary.mean:.3f}"


def _fmt_gap(paired: PairedReport | None) -> str:
    if paired is None or paired.gap is None or paired.gap.share is None:
        return "—"
    share = f"{100 * paired.gap.share:.0f}%"
    if paired.gap.ci is None or not all(map(math.isfinite, paired.gap.ci)):
        return share
    return f"{share} [{100 * paired.gap.ci.low:.0f}, {100 * paired.gap.ci.high:.0f}]"
