"""`dispatchloop evaluate --ope`: the off-policy estimators alone, on the store's logged events.

Each policy is estimated on the same logged decisions as the baseline (paired
bootstrap over episodes), with its support diagnostics, so an operator can see
what the logs say about a model before (or without) a gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dispatchloop.evaluation.gate import GateThresholds, support_problem
from dispatchloop.evaluation.gate_run import gate_inputs, resolve_contender
from dispatchloop.evaluation.logged import action_probabilities
from dispatchloop.evaluation.offpolicy import (
    ESTIMATORS,
    HORIZON,
    OffPolicyComparison,
    compare_policies,
    fit_reward_model,
    reward_features,
    with_propensity,
)
from dispatchloop.evaluation.policies import EvaluationInputError
from dispatchloop.settings import Settings


def run_ope(
    settings: Settings, *, policies: str | None, baseline: str | None, scenario: str, seed: int
) -> dict[str, Any]:
    """IPS, SNIPS and DR of each policy and of its difference from the baseline."""
    names = [name.strip() for name in (policies or "greedy,random").split(",") if name.strip()]
    base = baseline or "greedy"
    if base not in names:
        names.insert(0, base)
    contenders = {name: resolve_contender(name, "candidate") for name in names}
    inputs = gate_inputs(settings, scenario)
    if inputs.logged is None:
        raise EvaluationInputError(f"no logged events to estimate from: {inputs.note}")
    usable, excluded = with_propensity(inputs.logged.decisions)
    if usable.size == 0:
        raise EvaluationInputError(f"none of the {excluded} logged decisions has a propensity")
    keep = np.isfinite(inputs.logged.decisions.propensities)
    keep &= inputs.logged.decisions.propensities > 0
    observations = {key: value[keep] for key, value in inputs.logged.observations.items()}
    rng = np.random.default_rng([seed, 12])
    features = reward_features(
        observations["candidates"].astype(np.float64), observations["context"].astype(np.float64)
    )
    try:
        q_hat = fit_reward_model(features, usable, rng)
        probs = {n: action_probabilities(c.policy, observations) for n, c in contenders.items()}
    except ValueError as exc:
        raise EvaluationInputError(str(exc)) from None
    thresholds = GateThresholds.from_settings(settings.gate)
    rows = []
    for name in names:
        comparison = compare_policies(
            probs[name],
            probs[base],
            usable,
            q_hat,
            rng,
            confidence=thresholds.confidence,
            n_bootstrap=thresholds.ope_bootstrap,
            excluded=excluded,
        )
        rows.append(_row(name, comparison, thresholds, is_baseline=name == base))
    return {
        "baseline": base,
        "decisions": usable.size,
        "excluded_without_propensity": excluded,
        "confidence": thresholds.confidence,
        "horizon": HORIZON,
        "policies": rows,
    }


def _row(
    name: str, comparison: OffPolicyComparison, thresholds: GateThresholds, *, is_baseline: bool
) -> dict[str, Any]:
    estimates, support = comparison.candidate, comparison.candidate.support
    row: dict[str, Any] = {"policy": name}
    for key in ESTIMATORS:
        estimate = getattr(estimates, key)
        row[key] = {"value": estimate.value, "ci": list(estimate.ci)}
        if not is_baseline:
            diff = comparison.difference[key]
            row[f"{key}_vs_baseline"] = {"value": diff.value, "ci": list(diff.ci)}
    row["support"] = support._asdict()
    row["support_problem"] = support_problem(estimates, thresholds)
    return row


def render_ope(document: dict[str, Any]) -> str:
    """A readable table of `run_ope`'s document."""
    confidence = document["confidence"]
    lines = [
        f"{document['decisions']} logged decisions ({document['excluded_without_propensity']} "
        f"without propensity excluded); {document['horizon']}; {confidence:.0%} bootstrap "
        "intervals over episodes",
        "",
        f"{'policy':<20} {'IPS':>24} {'SNIPS':>24} {'DR':>24} {'ESS':>8}  support",
    ]
    for row in document["policies"]:
        cells = [
            f"{row[k]['value']:+.3f} [{row[k]['ci'][0]:+.2f}, {row[k]['ci'][1]:+.2f}]"
            for k in ESTIMATORS
        ]
        support = row["support_problem"] or "ok"
        lines.append(
            f"{row['policy']:<20} {cells[0]:>24} {cells[1]:>24} {cells[2]:>24} "
            f"{row['support']['ess']:>8.0f}  {support}"
        )
    return "\n".join(lines)
