"""Seed sets and `run_episodes`: paired, repeatable policy evaluation in the simulator.

Seeds come from three disjoint ranges: training from 0, validation from
10,000,000, test from 20,000,000. Tuning uses validation seeds only;
evaluation and promotion use test seeds only, so no model is judged on the
episodes it was tuned on. The same seed gives the same bookings and fleet to
every policy, so per-seed differences between two policies are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.progress import progress
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import Policy
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

SEED_SET_SIZE = 10_000_000
TRAIN_SEED_BASE = 0
VALIDATION_SEED_BASE = 10_000_000
TEST_SEED_BASE = 20_000_000
TRAIN_SEEDS = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + SEED_SET_SIZE)
VALIDATION_SEEDS = range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + SEED_SET_SIZE)
TEST_SEEDS = range(TEST_SEED_BASE, TEST_SEED_BASE + SEED_SET_SIZE)
MAX_BATCH = 256


def train_seeds(n: int, offset: int = 0) -> list[int]:
    return _take(TRAIN_SEEDS, n, offset)


def validation_seeds(n: int, offset: int = 0) -> list[int]:
    return _take(VALIDATION_SEEDS, n, offset)


def test_seeds(n: int, offset: int = 0) -> list[int]:
    return _take(TEST_SEEDS, n, offset)


test_seeds.__test__ = False  # type: ignore[attr-defined]  # not a pytest test function


def _take(seeds: range, n: int, offset: int) -> list[int]:
    if n < 0 or offset < 0 or offset + n > len(seeds):
        raise ValueError(f"cannot take {n} seeds at offset {offset} from a set of {len(seeds)}")
    return list(seeds[offset : offset + n])


class EpisodeResults(NamedTuple):
    """Per-episode figures of one policy, row i belonging to seeds[i] (paired by seed)."""

    policy: str
    seeds: NDArray[np.int64]
    returns: NDArray[np.float64]
    late_rate: NDArray[np.float64]
    cancel_rate: NDArray[np.float64]
    mean_pickup_delay: NDArray[np.float64]
    """Mean of max(pickup delay after window start, 0), in minutes."""
    empty_km: NDArray[np.float64]
    """Total empty kilometres driven to pickups in the episode."""

    def summary(self) -> dict[str, float]:
        return {
            "episodes": float(len(self.seeds)),
            "mean_return": float(self.returns.mean()),
            "late_rate": float(self.late_rate.mean()),
            "cancel_rate": float(self.cancel_rate.mean()),
            "mean_pickup_delay": float(self.mean_pickup_delay.mean()),
            "empty_km": float(self.empty_km.mean()),
        }


def run_episodes(
    policy: Policy,
    scenario: Scenario,
    reward: RewardSettings,
    seeds: Sequence[int],
    *,
    max_candidates: int | None = None,
    show_progress: bool = False,
) -> EpisodeResults:
    """Play one episode per seed with `policy`; vectorised unless it plans with hindsight."""
    if not seeds:
        raise ValueError("run_episodes needs at least one seed")
    rows: list[NDArray[np.float64]] = []
    with progress(f"episodes ({policy.name})", len(seeds), show_bar=show_progress) as bar:
        if getattr(policy, "needs_plan", False):
            env = DispatchEnv(scenario, reward, max_candidates)
            for seed in seeds:
                rows.append(_play_one(env, policy, seed))
                bar.update(1)
        else:
            for start in range(0, len(seeds), MAX_BATCH):
                chunk = list(seeds[start : start + MAX_BATCH])
                rows.extend(_play_batch(policy, scenario, reward, chunk, max_candidates))
                bar.update(len(chunk))
    table = np.array(rows)
    return EpisodeResults(policy.name, np.asarray(seeds, dtype=np.int64), *table.T)


def _play_one(env: DispatchEnv, policy: Policy, seed: int) -> NDArray[np.float64]:
    obs, _ = env.reset(seed=seed)
    policy.begin_episode(env.plan)
    while True:
        obs, _, terminated, _, info = env.step(policy.act(obs))
        if terminated:
            episode = info["episode"]
            return np.array(
                [
                    episode["return"],
                    episode["late_rate"],
                    episode["cancel_rate"],
                    episode["mean_pickup_delay"],
                    episode["empty_km"],
                ]
            )


def _play_batch(
    policy: Policy,
    scenario: Scenario,
    reward: RewardSettings,
    seeds: list[int],
    max_candidates: int | None,
) -> list[NDArray[np.float64]]:
    vec = VecDispatchEnv(scenario, reward, len(seeds), max_candidates)
    obs = vec.reset(seeds)
    for _ in range(scenario.bookings_per_episode):
        obs, _, terminated, infos = vec.step(policy.act_batch(obs))
    assert terminated.all()  # every env ends after bookings_per_episode steps
    keys = ("return", "late_rate", "cancel_rate", "mean_pickup_delay", "empty_km")
    table = np.stack([infos[f"episode_{key}"] for key in keys], axis=1)
    return list(table)
