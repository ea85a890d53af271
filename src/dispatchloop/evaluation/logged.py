"""Logged decisions for off-policy estimation: from the replay store, or logged in the simulator.

The store path turns `rl.logged.LoggedDataset` (featurized with the world's
demand map, no simulator object needed) into the observations a policy scores
and the `LoggedDecisions` arrays the estimators take. The simulator path plays
a logging policy with known propensities and records, for every decision, the
exact reward every driver would have earned (`VecDispatchEnv.preview_rewards`):
the ground truth that the estimators' intervals are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.evaluation.offpolicy import LoggedDecisions
from dispatchloop.evaluation.paired import FloatArray
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import Policy, ProbabilisticPolicy
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

Observation = dict[str, NDArray[Any]]
CHUNK = 4_096


class LoggedSample(NamedTuple):
    """Logged situations as policy observations, with the decisions taken in them."""

    observations: Observation
    """Stacked observations (`candidates`, `context`, `action_mask`), leading axis N."""
    decisions: LoggedDecisions
    """What was logged: actions, rewards, propensities, episodes."""
    true_rewards: FloatArray | None = None
    """(N, A) exact reward of every slot (simulator logs only; None for real logs)."""


def from_dataset(dataset: LoggedDataset) -> LoggedSample:
    """The store's logged transitions as a sample (propensity NaN where an event had none)."""
    _, episodes = np.unique(np.asarray(dataset.episode_ids, dtype=object), return_inverse=True)
    observations: Observation = {
        "candidates": dataset.candidates,
        "context": dataset.context,
        "action_mask": dataset.masks.astype(np.int8),
    }
    decisions = LoggedDecisions(
        episodes=episodes.astype(np.int64),
        actions=dataset.actions,
        rewards=dataset.rewards.astype(np.float64),
        propensities=dataset.propensities,
        masks=dataset.masks,
    )
    return LoggedSample(observations, decisions)


def action_probabilities(policy: Policy, observations: Observation) -> FloatArray:
    """(N, A) probabilities of `policy` on every logged situation, in chunks.

    Raises ValueError for a policy that cannot give probabilities (the planners).
    """
    if not isinstance(policy, ProbabilisticPolicy):
        raise ValueError(f"policy {policy.name!r} cannot give action probabilities")
    total = len(observations["action_mask"])
    parts = [
        policy.action_probs(
            {key: value[start : start + CHUNK] for key, value in observations.items()}
        )
        for start in range(0, total, CHUNK)
    ]
    width = observations["action_mask"].shape[1]
    return np.concatenate(parts) if parts else np.zeros((0, width))


def simulate_logs(
    logger: ProbabilisticPolicy,
    scenario: Scenario,
    reward: RewardSettings,
    seeds: Sequence[int],
) -> LoggedSample:
    """Play `logger` on one episode per seed (batched) and log every decision it takes.

    Propensities are the logger's exact `action_probs` of the action it took.
    """
    env = VecDispatchEnv(scenario, reward, len(seeds))
    obs = env.reset(seeds)
    steps: list[tuple[Observation, NDArray[np.int64], FloatArray, FloatArray, FloatArray]] = []
    for _ in range(scenario.bookings_per_episode):
        probs = logger.action_probs(obs)
        actions = logger.act_batch(obs)
        truth = env.preview_rewards()
        propensity = probs[np.arange(len(actions)), actions]
        next_obs, rewards, _, _ = env.step(actions)
        steps.append((obs, actions, rewards, propensity, truth))
        obs = next_obs
    observations = {key: np.concatenate([s[0][key] for s in steps]) for key in obs}
    n_steps = len(steps)
    decisions = LoggedDecisions(
        episodes=np.tile(np.arange(len(seeds), dtype=np.int64), n_steps),
        actions=np.concatenate([s[1] for s in steps]),
        rewards=np.concatenate([s[2] for s in steps]),
        propensities=np.concatenate([s[3] for s in steps]),
        masks=observations["action_mask"].astype(bool),
    )
    return LoggedSample(observations, decisions, np.concatenate([s[4] for s in steps]))


def true_value(policy: Policy, sample: LoggedSample) -> float:
    """Exact per-decision value of `policy` on the sample's situations (simulator logs only)."""
    if sample.true_rewards is None:
        raise ValueError("only simulator logs know every action's reward")
    probs = action_probabilities(policy, sample.observations)
    return float((probs * np.where(sample.decisions.masks, sample.true_rewards, 0.0)).sum(1).mean())
