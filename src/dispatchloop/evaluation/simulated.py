"""Paired simulator A/B: every policy plays the same seeded TEST episodes.

Same seed → same bookings and fleet for every policy (sim.rollout guarantees
it), so the report can pair episode by episode. Policies are the simulator
baselines `random`, `greedy`, `hindsight`, `rollout`, or model directories written by
`rl.artifacts.save_model`. The scenario is the default world or one calibrated
from the replay store, so a candidate is judged on the traffic it will serve.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from dispatchloop.evaluation.paired import FloatArray
from dispatchloop.evaluation.policies import (
    EvaluationInputError,
    EvaluationRequest,
    PolicySpec,
    load_q_network,
)
from dispatchloop.evaluation.report import RETURN, EvaluationReport, PolicyRuns, build_report
from dispatchloop.progress import Progress, progress
from dispatchloop.replay import TimeWindow, open_store
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import NAMED_POLICIES, Policy
from dispatchloop.sim.rollout import EpisodeResults, run_episodes
from dispatchloop.sim.scenario import Scenario

GUARDRAILS = ("late_rate", "cancel_rate", "mean_pickup_delay", "empty_km")
"""Per-episode figures beside the return; a candidate must not regress the first two."""

ScenarioSource = Literal["default", "store"]
_LOG = logging.getLogger(__name__)


def load_scenario(
    source: ScenarioSource, store_url: str, window: TimeWindow | None = None
) -> tuple[Scenario, str]:
    """The world to evaluate in and a label for reports (`dispatch:default` / `dispatch:store`)."""
    window = window or TimeWindow()
    if source == "default":
        return Scenario.default(), "dispatch:default"
    store = open_store(store_url)
    try:
        if store.count_events(window) == 0:
            raise EvaluationInputError(
                "the replay store has no events to calibrate a scenario from "
                "(ingest some first, or use --scenario default)"
            )
        return Scenario.fit(store, window), "dispatch:store"
    finally:
        store.close()


def dispatch_policy(spec: PolicySpec, seed: int) -> Policy:
    """The sim `Policy` for one spec; `random` is seeded so reruns are identical."""
    if spec.model_dir is not None:
        return DQNPolicy(load_q_network(spec.model_dir), name=spec.name)
    if spec.name not in NAMED_POLICIES:
        raise EvaluationInputError(f"{spec.name!r} is not a simulator baseline")
    return NAMED_POLICIES[spec.name](seed)


def episode_metrics(results: EpisodeResults) -> dict[str, FloatArray]:
    """The per-episode arrays of one rollout under the report's metric names."""
    return {
        RETURN: np.asarray(results.returns, dtype=np.float64),
        **{name: np.asarray(getattr(results, name), dtype=np.float64) for name in GUARDRAILS},
    }


def run_dispatch(
    policies: Mapping[str, Policy],
    scenario: Scenario,
    reward: RewardSettings,
    seeds: Sequence[int],
    *,
    bar: Progress | None = None,
    chunk: int = 64,
) -> PolicyRuns:
    """Every policy on the same seeds, in vectorised chunks so a progress bar can move."""
    runs: dict[str, dict[str, FloatArray]] = {}
    for name, policy in policies.items():
        parts: list[dict[str, FloatArray]] = []
        for start in range(0, len(seeds), chunk):
            part = list(seeds[start : start + chunk])
            parts.append(episode_metrics(run_episodes(policy, scenario, reward, part)))
            if bar is not None:
                bar.update(len(part), policy=name)
        runs[name] = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return runs


def evaluate_dispatch(
    request: EvaluationRequest,
    scenario: Scenario,
    reward: RewardSettings,
    environment: str,
    show_bar: bool | None = None,
) -> EvaluationReport:
    """The simulator A/B of `request` on `scenario` (default or fitted from the store)."""
    seeds = request.seeds
    policies = {spec.name: dispatch_policy(spec, request.seed) for spec in request.policies}
    total = len(policies) * len(seeds)
    with progress("evaluate", total, logger=_LOG, show_bar=show_bar) as bar:
        runs = run_dispatch(policies, scenario, reward, seeds, bar=bar)
    return build_report(
        runs,
        environment=environment,
        seeds=seeds,
        baseline=request.baseline,
        rng=np.random.default_rng(request.seed),
        gap_policies=request.model_names,
    )
