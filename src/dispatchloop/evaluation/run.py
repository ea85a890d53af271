"""`dispatchloop evaluate` behind its thin CLI command: options in, report out.

Chooses the path (dispatch simulator or a Gymnasium env), the defaults that
depend on it (baseline greedy vs random), and turns every unusable option into
an `EvaluationInputError` the CLI reports in one sentence with exit code 2.
"""

from __future__ import annotations

from typing import get_args

from dispatchloop.evaluation.gym import evaluate_gym
from dispatchloop.evaluation.policies import (
    BASELINES,
    GYM_BASELINES,
    EvaluationInputError,
    EvaluationRequest,
    PolicySpec,
    parse_policies,
)
from dispatchloop.evaluation.report import EvaluationReport
from dispatchloop.evaluation.simulated import ScenarioSource, evaluate_dispatch, load_scenario
from dispatchloop.settings import Settings

DEFAULT_POLICIES = "random,greedy,hindsight"


def run_evaluation(
    settings: Settings,
    *,
    policies: str | None,
    baseline: str | None,
    env_id: str | None,
    scenario: str,
    episodes: int,
    seed: int,
    show_bar: bool | None = None,
) -> EvaluationReport:
    """Evaluate on the dispatch simulator, or on `env_id` when given."""
    if env_id is not None:
        specs = parse_policies((policies or "random").split(","), GYM_BASELINES)
        specs = with_default_baseline(specs, baseline, "random")
        request = EvaluationRequest(tuple(specs), baseline or "random", episodes, seed)
        return evaluate_gym(request, env_id, show_bar=show_bar)
    source = scenario_source(scenario)
    specs = parse_policies((policies or DEFAULT_POLICIES).split(","), BASELINES)
    specs = with_default_baseline(specs, baseline, "greedy")
    request = EvaluationRequest(tuple(specs), baseline or "greedy", episodes, seed)
    world, label = load_scenario(source, settings.resolved_store_url)
    return evaluate_dispatch(request, world, settings.reward, label, show_bar=show_bar)


def with_default_baseline(
    specs: list[PolicySpec], baseline: str | None, default: str
) -> list[PolicySpec]:
    """Add the default baseline when none was asked for and the list lacks it.

    `evaluate --policies DIR` (one model) must pair the model against something
    without the operator having to know which baseline the path defaults to; an
    explicit `--baseline` is never added silently (a typo there stays an error)."""
    if baseline is not None or any(spec.name == default for spec in specs):
        return specs
    return [PolicySpec(default), *specs]


def scenario_source(value: str) -> ScenarioSource:
    choices: tuple[ScenarioSource, ...] = get_args(ScenarioSource)
    for choice in choices:
        if value == choice:
            return choice
    raise EvaluationInputError(f"--scenario must be one of {', '.join(choices)}, got {value!r}")
