"""Replay buffer and n-step return arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from dispatchloop.rl.buffer import NStepAccumulator, ReplayBuffer, Transitions


def _push(acc: NStepAccumulator, t: int, reward: float, terminated: bool, over: bool):
    obs = {"obs": np.array([[float(t)]], np.float32)}
    nxt = {"obs": np.array([[float(t + 1)]], np.float32)}
    mask = np.ones((1, 2), np.bool_)
    return acc.push(
        obs,
        mask,
        np.array([t % 2]),
        np.array([reward]),
        next_observations=nxt,
        next_masks=mask,
        terminated=np.array([terminated]),
        episode_over=np.array([over]),
    )


def test_n_step_returns_discount_and_flush_at_termination() -> None:
    acc = NStepAccumulator(n_step=3, gamma=0.5, num_envs=1)
    assert _push(acc, 0, 1.0, False, False) is None
    assert _push(acc, 1, 2.0, False, False) is None
    first = _push(acc, 2, 3.0, False, False)
    assert first is not None
    assert first.rewards.tolist() == [1.0 + 0.5 * 2.0 + 0.25 * 3.0]
    assert first.discounts.tolist() == [0.125]
    assert first.dones.tolist() == [0.0]
    assert first.observations["obs"].ravel().tolist() == [0.0]
    assert first.next_observations["obs"].ravel().tolist() == [3.0]  # s_{t+3}
    rest = _push(acc, 3, 4.0, True, True)
    assert rest is not None
    assert rest.rewards.tolist() == [2.0 + 0.5 * 3.0 + 0.25 * 4.0, 3.0 + 0.5 * 4.0, 4.0]
    assert rest.discounts.tolist() == [0.125, 0.25, 0.5]
    assert rest.dones.tolist() == [1.0, 1.0, 1.0]
    assert rest.observations["obs"].ravel().tolist() == [1.0, 2.0, 3.0]
    assert rest.actions.tolist() == [1, 0, 1]
    # The next episode starts clean.
    assert _push(acc, 10, 1.0, False, False) is None


def test_truncated_episode_still_bootstraps() -> None:
    acc = NStepAccumulator(n_step=2, gamma=0.9, num_envs=1)
    assert _push(acc, 0, 1.0, False, False) is None
    out = _push(acc, 1, 1.0, False, True)  # truncated, not terminated
    assert out is not None
    assert out.dones.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(out.rewards, [1.9, 1.0])
    np.testing.assert_allclose(out.discounts, [0.81, 0.9])


def test_n_step_keeps_environments_apart() -> None:
    acc = NStepAccumulator(n_step=2, gamma=1.0, num_envs=2)
    mask = np.ones((2, 2), np.bool_)

    def push(rewards: list[float], over: list[bool]) -> Transitions | None:
        obs = {"obs": np.zeros((2, 1), np.float32)}
        return acc.push(
            obs,
            mask,
            np.array([0, 1]),
            np.array(rewards),
            next_observations=obs,
            next_masks=mask,
            terminated=np.array(over),
            episode_over=np.array(over),
        )

    first = push([1.0, 10.0], [False, True])
    assert first is not None and first.rewards.tolist() == [10.0]
    second = push([2.0, 20.0], [False, False])
    assert second is not None and second.rewards.tolist() == [3.0]  # env 0: 1 + 2


def _transitions(values: list[int]) -> Transitions:
    k = len(values)
    column = np.array(values, np.float32).reshape(k, 1)
    mask = np.ones((k, 3), np.bool_)
    return Transitions(
        observations={"obs": column},
        masks=mask,
        actions=np.array(values, np.int64) % 3,
        rewards=column.ravel(),
        next_observations={"obs": column + 1},
        next_masks=mask,
        dones=np.zeros(k, np.float32),
        discounts=np.ones(k, np.float32),
    )


def test_buffer_wraps_around_and_keeps_the_newest() -> None:
    buffer = ReplayBuffer({"obs": (1,)}, 3, capacity=5, rng=np.random.default_rng(0))
    buffer.add(_transitions([0, 1, 2, 3]))
    buffer.add(_transitions([4, 5, 6]))
    assert len(buffer) == 5
    batch = buffer.sample(200)
    seen = set(batch.rewards.tolist())
    assert seen == {2.0, 3.0, 4.0, 5.0, 6.0}
    np.testing.assert_array_equal(batch.next_observations["obs"].ravel(), batch.rewards + 1)
    assert batch.actions.dtype == np.int64
    assert batch.masks.shape == (200, 3)


def test_buffer_accepts_a_batch_larger_than_capacity() -> None:
    buffer = ReplayBuffer({"obs": (1,)}, 3, capacity=3, rng=np.random.default_rng(0))
    buffer.add(_transitions(list(range(10))))
    assert set(buffer.sample(100).rewards.tolist()) == {7.0, 8.0, 9.0}


def test_empty_buffer_refuses_to_sample() -> None:
    buffer = ReplayBuffer({"obs": (1,)}, 3, capacity=3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(1)
