"""Baseline dispatch policies behind one small `Policy` protocol.

Every policy chooses only among eligible drivers (`action_mask == 1`). A policy
sees the observation; only the hindsight planner also uses the whole episode
given to `begin_episode` (it is a reference for what is achievable, not a
policy that could run in production).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dispatchloop.rl.featurizer import CANDIDATE_FEATURES
from dispatchloop.sim.dynamics import EpisodePlan

Observation = dict[str, NDArray[Any]]
ETA_COLUMN = CANDIDATE_FEATURES.index("eta_h")


@runtime_checkable
class Policy(Protocol):
    """What the simulator, evaluation and the `simulate` producer need of a dispatcher."""

    name: str

    def begin_episode(self, plan: EpisodePlan) -> None:
        """The whole coming episode; only the hindsight planner uses it."""

    def act(self, obs: Observation) -> int:
        """Index of the chosen driver for one observation."""

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        """Chosen driver per row of stacked observations (leading axis = envs)."""


class RandomPolicy:
    """Uniform among eligible drivers; seeded, so a run can be repeated."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def begin_episode(self, plan: EpisodePlan) -> None:
        del plan  # a random dispatcher does not plan

    def act(self, obs: Observation) -> int:
        return int(self.act_batch({"action_mask": obs["action_mask"][None, :]})[0])

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        mask = obs["action_mask"].astype(bool)
        scores = np.where(mask, self._rng.random(mask.shape), -1.0)
        return np.asarray(scores.argmax(axis=1), dtype=np.int64)

    def probabilities(self, obs: Observation) -> NDArray[np.float64]:
        """The chance of each driver (the propensity logged with an event)."""
        mask = obs["action_mask"].astype(np.float64)
        return np.asarray(mask / mask.sum(), dtype=np.float64)


class GreedyPolicy:
    """Earliest ETA to the pickup (availability + drive) among eligible drivers.

    What most dispatch systems do by hand; ties go to the lower index.
    """

    name = "greedy"

    def begin_episode(self, plan: EpisodePlan) -> None:
        del plan  # greedy looks only at the present

    def act(self, obs: Observation) -> int:
        return int(
            self.act_batch(
                {"candidates": obs["candidates"][None], "action_mask": obs["action_mask"][None]}
            )[0]
        )

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        eta = obs["candidates"][..., ETA_COLUMN]
        masked = np.where(obs["action_mask"].astype(bool), eta, np.inf)
        return np.asarray(masked.argmin(axis=1), dtype=np.int64)


def masked_choice_is_valid(obs: Observation, actions: NDArray[np.int64]) -> bool:
    """True when every action points at an eligible row (used in tests and asserts)."""
    mask = obs["action_mask"]
    return bool(np.all(mask[np.arange(len(actions)), actions] == 1))
