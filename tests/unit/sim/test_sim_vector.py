"""VecDispatchEnv equals DispatchEnv per seed, across autoresets, with any policy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import GreedyPolicy, RandomPolicy
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

SEEDS = [0, 5, 17, 123_456]


@pytest.mark.parametrize("max_candidates", [None, 12])
def test_vector_env_equals_single_env_per_seed_over_two_episodes(
    max_candidates: int | None,
) -> None:
    scenario, reward = Scenario.default(), RewardSettings()
    vec = VecDispatchEnv(scenario, reward, len(SEEDS), max_candidates)
    singles = [DispatchEnv(scenario, reward, max_candidates) for _ in SEEDS]
    policy = RandomPolicy(3)
    vec_obs = vec.reset(SEEDS)
    single_obs = [env.reset(seed=seed)[0] for env, seed in zip(singles, SEEDS, strict=True)]
    finished = 0
    for _ in range(2 * scenario.bookings_per_episode):
        for i, obs in enumerate(single_obs):
            for key in obs:
                np.testing.assert_array_equal(vec_obs[key][i], obs[key], err_msg=key)
        actions = policy.act_batch(vec_obs)
        vec_obs, rewards, terminated, infos = vec.step(actions)
        for i, env in enumerate(singles):
            obs, reward_i, done, _, info = env.step(int(actions[i]))
            assert rewards[i] == reward_i
            assert bool(terminated[i]) == done
            assert infos["pickup_delay_min"][i] == info["pickup_delay_min"]
            if done:
                finished += 1
                assert infos["episode_return"][i] == pytest.approx(info["episode"]["return"])
                obs, _ = env.reset()  # continues env's own Generator, like the autoreset
            single_obs[i] = obs
    assert finished == 2 * len(SEEDS)


def test_vector_env_rejects_masked_actions_and_wrong_shapes() -> None:
    vec = VecDispatchEnv(Scenario.default(), RewardSettings(), 16)
    obs = vec.reset(range(16))
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(3, dtype=np.int64))
    actions = GreedyPolicy().act_batch(obs)
    outside = actions.copy()
    outside[0] = 9  # outside the fleet of 9
    with pytest.raises(ValueError, match="env 0"):
        vec.step(outside)
    env, driver = np.argwhere(obs["action_mask"] == 0)[0]  # some driver is unavailable
    masked = actions.copy()
    masked[env] = driver
    with pytest.raises(ValueError, match=f"env {env}"):
        vec.step(masked)
    vec.step(actions)  # the valid actions still work after the rejected calls


def test_same_seeds_same_rewards() -> None:
    def run() -> np.ndarray:
        vec = VecDispatchEnv(Scenario.default(), RewardSettings(), 8)
        obs = vec.reset(range(8))
        total = np.zeros(8)
        for _ in range(40):
            obs, rewards, _, _ = vec.step(GreedyPolicy().act_batch(obs))
            total += rewards
        return total

    first, second = run(), run()
    np.testing.assert_array_equal(first, second)
    assert len(set(first.tolist())) > 1


@settings(max_examples=15, deadline=None)
@given(
    drivers=st.integers(1, 10),
    bookings=st.integers(1, 8),
    unavailable=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_vector_env_equals_single_env_on_any_scenario(
    drivers: int, bookings: int, unavailable: float, seed: int
) -> None:
    scenario = dataclasses.replace(
        Scenario.default(),
        n_drivers=drivers,
        bookings_per_episode=bookings,
        unavailable_prob=unavailable,
    )
    reward = RewardSettings()
    vec = VecDispatchEnv(scenario, reward, 2)
    vec_obs = vec.reset([seed, seed + 1])
    env = DispatchEnv(scenario, reward)
    obs, _ = env.reset(seed=seed)
    policy = RandomPolicy(seed)
    for _ in range(2 * bookings):
        np.testing.assert_array_equal(vec_obs["candidates"][0], obs["candidates"])
        np.testing.assert_array_equal(vec_obs["action_mask"][0], obs["action_mask"])
        actions = policy.act_batch(vec_obs)
        vec_obs, rewards, terminated, _ = vec.step(actions)
        obs, reward_0, done, _, _ = env.step(int(actions[0]))
        assert rewards[0] == reward_0 and terminated[0] == done
        if done:
            obs, _ = env.reset()


def test_both_envs_pad_to_more_candidates_and_refuse_fewer_than_the_fleet() -> None:
    scenario = Scenario.default()
    assert DispatchEnv(scenario, RewardSettings(), max_candidates=40).max_candidates == 40
    assert VecDispatchEnv(scenario, RewardSettings(), 2).max_candidates == scenario.n_drivers
    with pytest.raises(ValueError, match="below the fleet"):
        DispatchEnv(scenario, RewardSettings(), max_candidates=scenario.n_drivers - 1)
    with pytest.raises(ValueError, match="below the fleet"):
        VecDispatchEnv(scenario, RewardSettings(), 2, max_candidates=scenario.n_drivers - 1)
