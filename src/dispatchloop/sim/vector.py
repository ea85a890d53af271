"""`VecDispatchEnv`: many dispatch episodes stepped together with NumPy (the fast path).

Runs the same batched physics as `DispatchEnv` and `featurize_batch` (which
equals `featurize` row by row), so env i reset with seed s plays exactly the
episodes `DispatchEnv.reset(seed=s)` followed by `reset()` would play.

Same-step autoreset: when env i finishes an episode, `terminated[i]` is True
and `obs[i]` is already the first observation of its next episode, drawn from
env i's own Generator. The terminal transition's next observation is not
returned (DQN masks it with done). Episode figures of the finished episode
are in `infos["episode_*"]` (NaN for envs that did not finish this step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import featurize_batch
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import (
    CANCELLED,
    LATE,
    PLAN_FIELDS,
    EpisodePlan,
    FleetState,
    apply_decisions,
    draw_uniforms,
    outcomes_of,
    plans_from_uniforms,
    rewards_of,
    situation_batch,
)
from dispatchloop.sim.env import EpisodeTally, observation_space
from dispatchloop.sim.scenario import Scenario

Observation = dict[str, NDArray[Any]]
EPISODE_KEYS = tuple(f"episode_{key}" for key in EpisodeTally().summary())


class VecDispatchEnv:
    """`num_envs` dispatch episodes advanced by one `step(actions)` call."""

    def __init__(
        self,
        scenario: Scenario,
        reward: RewardSettings,
        num_envs: int,
        max_candidates: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        self.scenario = scenario
        self.reward_settings = reward
        self.num_envs = num_envs
        self.max_candidates = scenario.candidate_slots(max_candidates)
        self.single_observation_space = observation_space(self.max_candidates)
        self._rngs: list[np.random.Generator] = []
        self._plans: EpisodePlan | None = None
        self._state: FleetState | None = None
        self._step = np.zeros(num_envs, dtype=np.int64)
        self._sums = np.zeros((5, num_envs))  # return, late, cancelled, delay, empty_km

    @property
    def plans(self) -> EpisodePlan:
        """The current episode of every env (leading axis = env)."""
        return self._require()[0]

    def reset(self, seeds: Sequence[int]) -> Observation:
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        self._rngs = [np.random.default_rng(seed) for seed in seeds]
        self._plans = self._draw_plans(range(self.num_envs))
        self._state = FleetState.start(self._plans)
        self._step[:] = 0
        self._sums[:] = 0.0
        return self._observe()

    def step(
        self, actions: NDArray[np.integer]
    ) -> tuple[Observation, NDArray[np.float64], NDArray[np.bool_], dict[str, NDArray[Any]]]:
        plans, state = self._require()
        chosen: NDArray[np.int64] = np.asarray(actions, dtype=np.int64)
        self._check_actions(plans, chosen)
        rows = np.arange(self.num_envs)
        out = apply_decisions(self.scenario, state, plans, self._step, chosen)
        rewards = rewards_of(out, plans.priority[rows, self._step], self.reward_settings)
        self._sums += np.stack(
            [
                rewards,
                out.status == LATE,
                out.status == CANCELLED,
                np.maximum(out.pickup_delay_min, 0.0),
                out.empty_km,
            ]
        )
        infos: dict[str, NDArray[Any]] = {
            "booking_index": self._step.copy(),
            "outcome_status": out.status,
            "pickup_delay_min": out.pickup_delay_min,
            "empty_km": out.empty_km,
            "total_km": out.total_km,
        }
        self._step += 1
        terminated = self._step == self.scenario.bookings_per_episode
        infos.update(self._episode_infos(terminated))
        if terminated.any():
            self._restart(np.flatnonzero(terminated))
        return self._observe(), rewards, terminated, infos

    def preview_rewards(self) -> NDArray[np.float64]:
        """(num_envs, n_drivers) reward of giving each env's current booking to each driver.

        Nothing is applied: the outcome is a pure function of the plan (its
        cancellation dice included) and the fleet, so this is the exact
        counterfactual reward of every action, the ground truth that off-policy
        estimators are checked against. Ineligible drivers get a value too; mask it.
        """
        plans, state = self._require()
        drivers = self.scenario.n_drivers
        rows = np.repeat(np.arange(self.num_envs), drivers)
        step = np.repeat(self._step, drivers)
        who = np.tile(np.arange(drivers), self.num_envs)
        out = outcomes_of(
            self.scenario,
            plans,
            rows,
            step,
            free_s=state.free_s[rows, who],
            lat=state.lat[rows, who],
            lon=state.lon[rows, who],
        )
        rewards = rewards_of(out, plans.priority[rows, step], self.reward_settings)
        return rewards.reshape(self.num_envs, drivers)

    def close(self) -> None:
        """Nothing to release (no processes, no files); here for gymnasium-style callers."""

    def _check_actions(self, plans: EpisodePlan, actions: NDArray[np.int64]) -> None:
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        in_fleet = (actions >= 0) & (actions < self.scenario.n_drivers)
        safe = np.where(in_fleet, actions, 0)
        ok = in_fleet & plans.eligible[np.arange(self.num_envs), self._step, safe]
        if not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            raise ValueError(
                f"env {bad}: action {int(actions[bad])} is not an eligible driver "
                "(check action_mask)"
            )

    def _episode_infos(self, terminated: NDArray[np.bool_]) -> dict[str, NDArray[Any]]:
        length = float(self.scenario.bookings_per_episode)
        total, late, cancelled, delay, empty = self._sums
        values = (
            total,
            np.full(self.num_envs, length),
            late / length,
            cancelled / length,
            delay / length,
            empty,
        )
        return {
            key: np.where(terminated, value, np.nan)
            for key, value in zip(EPISODE_KEYS, values, strict=True)
        }

    def _draw_plans(self, indices: Sequence[int] | NDArray[np.int64]) -> EpisodePlan:
        """Next episode of each listed env: one draw from its own Generator, one transform."""
        uniforms = np.stack([draw_uniforms(self.scenario, self._rngs[i]) for i in indices])
        return plans_from_uniforms(self.scenario, uniforms)

    def _restart(self, indices: NDArray[np.int64]) -> None:
        plans, state = self._require()
        fresh = self._draw_plans(indices)
        for name in PLAN_FIELDS:
            getattr(plans, name)[indices] = getattr(fresh, name)
        restarted = FleetState.start(fresh)
        for current, new in zip(state, restarted, strict=True):
            current[indices] = new
        self._step[indices] = 0
        self._sums[:, indices] = 0.0

    def _observe(self) -> Observation:
        plans, state = self._require()
        features = featurize_batch(
            situation_batch(state, plans, self._step), self.scenario.arrays.demand
        )
        n, m = self.scenario.n_drivers, self.max_candidates
        if m == n:
            return {
                "candidates": features.candidates,
                "context": features.context,
                "action_mask": features.mask.astype(np.int8),
            }
        candidates = np.zeros((self.num_envs, m, features.candidates.shape[2]), np.float32)
        candidates[:, :n] = features.candidates
        mask = np.zeros((self.num_envs, m), dtype=np.int8)
        mask[:, :n] = features.mask
        return {"candidates": candidates, "context": features.context, "action_mask": mask}

    def _require(self) -> tuple[EpisodePlan, FleetState]:
        if self._plans is None or self._state is None:
            raise RuntimeError("call reset(seeds) first")
        return self._plans, self._state
