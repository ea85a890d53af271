"""DispatchEnv: gymnasium API, determinism per seed, masks, featurizer batch path."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from dispatchloop.decisions.featurizer import (
    CANDIDATE_FEATURES,
    Situation,
    eta_h_batch,
    featurize,
    featurize_batch,
)
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import FleetState, make_plan, situation_batch, stack_plans
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import GreedyPolicy, RandomPolicy
from dispatchloop.sim.scenario import Scenario


def _episode(env: DispatchEnv, seed: int, policy_seed: int = 0) -> list[tuple[float, str]]:
    policy = RandomPolicy(policy_seed)
    obs, _ = env.reset(seed=seed)
    trace = []
    done = False
    while not done:
        obs, reward, done, truncated, info = env.step(policy.act(obs))
        assert not truncated
        trace.append((reward, info["outcome_status"]))
    return trace


def test_check_env_passes() -> None:
    check_env(DispatchEnv(Scenario.default(), RewardSettings()), skip_render_check=True)


def test_same_seed_same_episode_and_other_seed_differs() -> None:
    env = DispatchEnv(Scenario.default(), RewardSettings())
    first, again, other = _episode(env, 7), _episode(env, 7), _episode(env, 8)
    assert first == again
    assert first != other


def test_episode_length_and_termination_info() -> None:
    scenario = Scenario.default()
    env = DispatchEnv(scenario, RewardSettings(), max_candidates=16)
    obs, _ = env.reset(seed=3)
    assert obs["candidates"].shape == (16, 12)  # 12 candidate features (featurizer v2)
    assert obs["action_mask"][scenario.n_drivers :].sum() == 0
    steps, done, info = 0, False, {}
    while not done:
        obs, _, done, _, info = env.step(GreedyPolicy().act(obs))
        steps += 1
    assert steps == scenario.bookings_per_episode
    assert set(info["episode"]) >= {"return", "late_rate", "cancel_rate", "empty_km"}
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step(0)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.situation()


def test_masked_action_is_rejected() -> None:
    env = DispatchEnv(Scenario.default(), RewardSettings(), max_candidates=12)
    obs, _ = env.reset(seed=1)
    assert obs["action_mask"][11] == 0
    with pytest.raises(ValueError, match="not an eligible driver"):
        env.step(11)
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        masked = np.flatnonzero(obs["action_mask"][:9] == 0)
        if masked.size:
            with pytest.raises(ValueError, match="not an eligible driver"):
                env.step(int(masked[0]))
            return
    pytest.fail("no masked driver in 50 episodes: the unavailability rule is not applied")


def test_featurize_batch_equals_featurize_row_by_row() -> None:
    scenario = Scenario.default()
    plans = stack_plans([make_plan(scenario, np.random.default_rng(s)) for s in range(32)])
    state = FleetState.start(plans)
    step = np.arange(32) % scenario.bookings_per_episode
    situations = situation_batch(state, plans, step)
    demand = scenario.arrays.demand
    batch = featurize_batch(situations, demand)
    for i in range(32):
        single = featurize(Situation(*(np.asarray(field)[i] for field in situations)), demand)
        np.testing.assert_array_equal(batch.candidates[i], single.candidates)
        np.testing.assert_array_equal(batch.context[i], single.context)
        np.testing.assert_array_equal(batch.mask[i], single.mask)
    # The planners' greedy continuation ranks by this column alone: it must be the same.
    eta_column = list(CANDIDATE_FEATURES).index("eta_h")
    np.testing.assert_array_equal(eta_h_batch(situations), batch.candidates[..., eta_column])
