"""Baselines respect masks on any scenario; hindsight ≥ greedy > random; the rollout planner
sees no future; rollout seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import EpisodePlan
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.planning import BOOKING_FIELDS, sampled_futures
from dispatchloop.sim.policies import (
    GreedyPolicy,
    HindsightPolicy,
    Policy,
    RandomPolicy,
    RolloutPolicy,
)
from dispatchloop.sim.producer import resolve_policy, simulated_events
from dispatchloop.sim.rollout import (
    run_episodes,
    test_seeds,
    train_seeds,
    validation_seeds,
)
from dispatchloop.sim.scenario import Scenario

scenarios = st.builds(
    lambda drivers, bookings, unavailable, equipped, mix: dataclasses.replace(
        Scenario.default(),
        n_drivers=drivers,
        bookings_per_episode=bookings,
        unavailable_prob=unavailable,
        equipped_share=equipped,
        priority_mix=mix,
    ),
    st.integers(1, 12),
    st.integers(1, 25),
    st.floats(0.0, 0.95),
    st.floats(0.0, 1.0),
    st.sampled_from([(0.6, 0.3, 0.1), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios, seed=st.integers(0, 2**31), extra=st.integers(0, 4))
def test_baselines_never_choose_a_masked_driver(scenario: Scenario, seed: int, extra: int) -> None:
    env = DispatchEnv(scenario, RewardSettings(), scenario.n_drivers + extra)
    policies: list[Policy] = [
        RandomPolicy(seed),
        GreedyPolicy(),
        HindsightPolicy(improve_passes=1),
        RolloutPolicy(samples=2),
    ]
    for policy in policies:
        obs, _ = env.reset(seed=seed)
        policy.begin_episode(env.plan)
        done = False
        while not done:
            assert obs["action_mask"].sum() >= 1  # never a booking without a driver
            action = policy.act(obs)
            assert obs["action_mask"][action] == 1, policy.name
            obs, _, done, _, _ = env.step(action)  # the env would raise on a masked action


def test_random_policy_batch_respects_masks_and_is_uniform() -> None:
    mask = np.array([[0, 1, 1, 0], [1, 0, 0, 0]] * 2000, dtype=np.int8)
    actions = RandomPolicy(1).act_batch({"action_mask": mask})
    assert np.all(mask[np.arange(len(actions)), actions] == 1)
    counts = np.bincount(actions[::2], minlength=4)
    assert counts[0] == counts[3] == 0
    assert abs(counts[1] - counts[2]) < 200  # 2000 fair coin flips


def test_hindsight_beats_greedy_beats_random_on_average() -> None:
    scenario, reward, seeds = Scenario.default(), RewardSettings(), validation_seeds(24)
    random = run_episodes(RandomPolicy(0), scenario, reward, seeds)
    greedy = run_episodes(GreedyPolicy(), scenario, reward, seeds)
    hindsight = run_episodes(HindsightPolicy(), scenario, reward, seeds)
    assert greedy.returns.mean() > random.returns.mean()
    assert hindsight.returns.mean() > greedy.returns.mean()
    # Greedy is one of the planner's starting points and replays are exact.
    assert np.all(hindsight.returns >= greedy.returns - 1e-9)


def _decisions(policy: RolloutPolicy | HindsightPolicy, plan: EpisodePlan, count: int) -> list[int]:
    """The policy's first `count` decisions, fed only what the env would show (the masks)."""
    policy.begin_episode(plan)
    return [policy.act({"action_mask": plan.eligible[k].astype(np.int8)}) for k in range(count)]


def test_the_rollout_planner_does_not_read_the_future() -> None:
    """Swapping every later booking and cancellation draw leaves its decisions unchanged."""
    env = DispatchEnv(Scenario.default(), RewardSettings())
    env.reset(seed=4)
    plan = env.plan
    env.reset(seed=5)
    other = env.plan
    k = 8
    changed = {name: getattr(plan, name).copy() for name in BOOKING_FIELDS}
    for name in BOOKING_FIELDS:
        changed[name][k + 1 :] = getattr(other, name)[k + 1 :]
    changed["cancel_u"][k:] = 1.0 - plan.cancel_u[k:]
    tampered = dataclasses.replace(plan, **changed)
    seen = _decisions(RolloutPolicy(samples=8), plan, k + 1)
    assert _decisions(RolloutPolicy(samples=8), tampered, k + 1) == seen
    # The tampering matters: the hindsight planner, which reads the future, changes course.
    hindsight = _decisions(HindsightPolicy(), plan, k + 1)
    assert _decisions(HindsightPolicy(), tampered, k + 1) != hindsight


def test_sampled_futures_keep_what_is_known_and_redraw_the_rest() -> None:
    env = DispatchEnv(Scenario.default(), RewardSettings())
    env.reset(seed=11)
    plan, k = env.plan, 5
    futures = sampled_futures(plan, k, Scenario.default(), np.random.default_rng(0), 6)
    assert futures.decided_s.shape == (6, plan.n_bookings)
    for name in BOOKING_FIELDS:
        known = getattr(futures, name)[:, : k + (name != "cancel_u")]
        np.testing.assert_array_equal(
            known, np.broadcast_to(getattr(plan, name)[: known.shape[1]], known.shape)
        )
    np.testing.assert_array_equal(
        futures.driver_lat, np.broadcast_to(plan.driver_lat, futures.driver_lat.shape)
    )
    later = futures.decided_s[:, k + 1 :]
    assert np.all(later >= plan.decided_s[k]) and np.all(np.diff(later, axis=1) >= 0)
    assert not np.array_equal(later[0], later[1])  # each future is its own draw
    assert not np.allclose(futures.cancel_u[:, k], plan.cancel_u[k])


def test_run_episodes_is_paired_repeatable_and_matches_the_single_env() -> None:
    scenario, reward, seeds = Scenario.default(), RewardSettings(), test_seeds(5)
    batch = run_episodes(GreedyPolicy(), scenario, reward, seeds)
    again = run_episodes(GreedyPolicy(), scenario, reward, seeds)
    np.testing.assert_array_equal(batch.returns, again.returns)
    env = DispatchEnv(scenario, reward)
    for i, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, r, done, _, info = env.step(GreedyPolicy().act(obs))
            total += r
        assert batch.returns[i] == pytest.approx(total)
        assert batch.empty_km[i] == pytest.approx(info["episode"]["empty_km"])
    assert list(batch.seeds) == seeds
    assert batch.summary()["episodes"] == 5


def test_seed_sets_are_disjoint() -> None:
    train, valid, test = set(train_seeds(1000)), set(validation_seeds(1000)), set(test_seeds(1000))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert validation_seeds(3) == [10_000_000, 10_000_001, 10_000_002]
    with pytest.raises(ValueError, match="cannot take"):
        test_seeds(10, offset=10_000_000)


def test_simulate_can_log_the_rollout_planner() -> None:
    """`dispatchloop simulate --policy rollout`: a dispatch system that plans, logged as such."""
    logging_policy = resolve_policy("rollout", 1)
    assert isinstance(logging_policy.policy, RolloutPolicy)
    events = list(
        simulated_events(Scenario.default(), RewardSettings(), logging_policy, 25, seed=1)
    )
    assert len(events) == 25  # runs across an episode boundary (19 bookings per episode)
    assert {event["action"]["policy"] for event in events} == {"rollout"}
