"""`DispatchEnv`: one episode = one shift, one step = one booking decision.

The observation is exactly what the featurizer makes of the decision situation
(`featurize(Situation)`), the same function logged events go through, so a
model sees the same numbers in simulation and in production. Rows of drivers
beyond the fleet are zero with mask 0. Choosing a masked driver raises
ValueError: policies must respect the mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import (
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
    Features,
    Situation,
    featurize,
)
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import (
    STATUS_NAMES,
    EpisodePlan,
    FleetState,
    Outcomes,
    apply_decisions,
    make_plan,
    rewards_of,
    situation_batch,
    stack_plans,
)
from dispatchloop.sim.scenario import Scenario

Observation = dict[str, NDArray[Any]]


def observation_space(max_candidates: int) -> spaces.Dict:
    """The Dict space shared by DispatchEnv and (per env) VecDispatchEnv."""
    return spaces.Dict(
        {
            "candidates": spaces.Box(
                -np.inf, np.inf, (max_candidates, N_CANDIDATE_FEATURES), np.float32
            ),
            "context": spaces.Box(-np.inf, np.inf, (N_CONTEXT_FEATURES,), np.float32),
            "action_mask": spaces.Box(0, 1, (max_candidates,), np.int8),
        }
    )


def padded_observation(features: Features, max_candidates: int) -> Observation:
    """Features of n drivers padded to max_candidates rows (zeros, mask 0)."""
    n = features.candidates.shape[0]
    candidates = np.zeros((max_candidates, N_CANDIDATE_FEATURES), dtype=np.float32)
    candidates[:n] = features.candidates
    mask = np.zeros(max_candidates, dtype=np.int8)
    mask[:n] = features.mask
    return {"candidates": candidates, "context": features.context, "action_mask": mask}


def empty_observation(max_candidates: int) -> Observation:
    """Returned with terminated=True: there is no next booking (DQN masks it with done)."""
    return {
        "candidates": np.zeros((max_candidates, N_CANDIDATE_FEATURES), dtype=np.float32),
        "context": np.zeros(N_CONTEXT_FEATURES, dtype=np.float32),
        "action_mask": np.zeros(max_candidates, dtype=np.int8),
    }


class EligibleDriverSpace(spaces.Discrete):
    """Discrete(max_candidates) whose `sample()` draws among the drivers eligible right now.

    A uniform sample over all drivers would hit masked ones, which the env rejects;
    sampling from the current mask keeps `env.action_space.sample()` (used by
    gymnasium's env checker and quick experiments) a legal random dispatcher.
    """

    def __init__(self, n: int, current_mask: Callable[[], NDArray[np.int8] | None]) -> None:
        super().__init__(n)
        self._current_mask = current_mask

    def sample(
        self, mask: NDArray[np.int8] | None = None, probability: NDArray[np.int8] | None = None
    ) -> np.int64:
        if mask is None and probability is None:
            mask = self._current_mask()
        return super().sample(mask=mask, probability=probability)


class EpisodeTally:
    """Running sums of one episode's outcomes, reported in `info["episode"]` at the end."""

    def __init__(self) -> None:
        self.reward = 0.0
        self.steps = 0
        self.late = 0
        self.cancelled = 0
        self.delay_min = 0.0
        self.empty_km = 0.0

    def add(self, reward: float, status: int, delay_min: float, empty_km: float) -> None:
        self.reward += reward
        self.steps += 1
        self.late += int(status == STATUS_NAMES.index("late"))
        self.cancelled += int(status == STATUS_NAMES.index("cancelled"))
        self.delay_min += max(delay_min, 0.0)
        self.empty_km += empty_km

    def summary(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {
            "return": self.reward,
            "length": float(self.steps),
            "late_rate": self.late / steps,
            "cancel_rate": self.cancelled / steps,
            "mean_pickup_delay": self.delay_min / steps,
            "empty_km": self.empty_km,
        }


class DispatchEnv(gym.Env[Observation, np.int64]):
    """Gymnasium env of one dispatch shift; see `sim.dynamics` for the world rules."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium's convention

    def __init__(
        self, scenario: Scenario, reward: RewardSettings, max_candidates: int | None = None
    ) -> None:
        self.scenario = scenario
        self.reward_settings = reward
        self.max_candidates = scenario.candidate_slots(max_candidates)
        self.observation_space = cast(
            spaces.Space[Observation], observation_space(self.max_candidates)
        )
        self.action_space = EligibleDriverSpace(self.max_candidates, self._current_mask)
        self._plans: EpisodePlan | None = None
        self._plan: EpisodePlan | None = None
        self._state: FleetState | None = None
        self._step = 0
        self._tally = EpisodeTally()
        self._situation: tuple[int, Situation] | None = None

    @property
    def plan(self) -> EpisodePlan:
        """The current episode, known in advance (for the hindsight planner and event logging)."""
        if self._plan is None:
            raise RuntimeError("call reset() first")
        return dataclasses.replace(self._plan, scenario=self.scenario, reward=self.reward_settings)

    @property
    def step_index(self) -> int:
        """Index of the booking the next step decides."""
        return self._step

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        super().reset(seed=seed)
        self._plan = make_plan(self.scenario, self.np_random)
        self._plans = stack_plans([self._plan])
        self._state = FleetState.start(self._plans)
        self._step = 0
        self._tally = EpisodeTally()
        self._situation = None
        return self._observe(), {"booking_index": 0}

    def situation(self) -> Situation:
        """The decision situation of the next booking, as the featurizer sees it."""
        if self._situation is not None and self._situation[0] == self._step:
            return self._situation[1]  # computed for the current observation already
        plans, state = self._require()
        if self._step >= self.scenario.bookings_per_episode:
            raise RuntimeError("episode is over: no booking left to decide, call reset()")
        batch = situation_batch(state, plans, np.array([self._step]))
        situation = Situation(
            hour_of_day=float(batch.hour_of_day[0]),
            priority=int(batch.priority[0]),
            pickup_lat=float(batch.pickup_lat[0]),
            pickup_lon=float(batch.pickup_lon[0]),
            dropoff_lat=float(batch.dropoff_lat[0]),
            dropoff_lon=float(batch.dropoff_lon[0]),
            to_window_start_min=float(batch.to_window_start_min[0]),
            to_window_end_min=float(batch.to_window_end_min[0]),
            driver_lat=batch.driver_lat[0],
            driver_lon=batch.driver_lon[0],
            available_in_min=batch.available_in_min[0],
            queue_len=batch.queue_len[0],
            eligible=batch.eligible[0],
        )
        self._situation = (self._step, situation)
        return situation

    def step(self, action: np.int64 | int) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        plans, state = self._require()
        if self._step >= self.scenario.bookings_per_episode:
            raise RuntimeError("episode is over: call reset()")
        chosen = int(action)
        if not (0 <= chosen < self.scenario.n_drivers and plans.eligible[0, self._step, chosen]):
            raise ValueError(f"action {chosen} is not an eligible driver (check action_mask)")
        steps = np.array([self._step])
        out = apply_decisions(self.scenario, state, plans, steps, np.array([chosen]))
        reward = float(rewards_of(out, plans.priority[0, steps], self.reward_settings)[0])
        info = _outcome_info(out, self._step)
        self._tally.add(reward, int(out.status[0]), info["pickup_delay_min"], info["empty_km"])
        self._step += 1
        terminated = self._step == self.scenario.bookings_per_episode
        if terminated:
            info["episode"] = self._tally.summary()
            return empty_observation(self.max_candidates), reward, True, False, info
        return self._observe(), reward, False, False, info

    def _current_mask(self) -> NDArray[np.int8] | None:
        if self._plan is None or self._step >= self.scenario.bookings_per_episode:
            return None
        mask = np.zeros(self.max_candidates, dtype=np.int8)
        mask[: self.scenario.n_drivers] = self._plan.eligible[self._step]
        return mask

    def _observe(self) -> Observation:
        features = featurize(self.situation(), self.scenario.arrays.demand)
        return padded_observation(features, self.max_candidates)

    def _require(self) -> tuple[EpisodePlan, FleetState]:
        if self._plans is None or self._state is None:
            raise RuntimeError("call reset() first")
        return self._plans, self._state


def _outcome_info(out: Outcomes, booking_index: int) -> dict[str, Any]:
    return {
        "booking_index": booking_index,
        "outcome_status": STATUS_NAMES[int(out.status[0])],
        "pickup_delay_min": float(out.pickup_delay_min[0]),
        "empty_km": float(out.empty_km[0]),
        "total_km": float(out.total_km[0]),
        "occurred_s": float(out.occurred_s[0]),
    }
