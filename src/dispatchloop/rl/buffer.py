"""Preallocated circular replay buffer with n-step returns and typed batches.

Observations are dicts of arrays (`{"candidates", "context"}` for dispatch,
`{"obs"}` for a flat Gym env) plus a boolean action mask, stored for both the
state and the next state: the target's max must also respect the next state's
mask. n-step returns are assembled per environment by `NStepAccumulator` before
they reach the buffer, so the buffer itself only stores ready-made transitions
(reward = discounted n-step sum, discount = gamma**k of the bootstrap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

ArrayObs = Mapping[str, NDArray[np.float32]]


class ReplayBatch(NamedTuple):
    """A minibatch of n-step transitions as tensors (like SB3's ReplayBufferSamples).

    For the PyTorch reference loss (`dqn.dqn_loss`); the buffer samples `Transitions`.
    """

    observations: dict[str, torch.Tensor]
    masks: torch.Tensor  # (B, A) bool: actions allowed in the state
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32: sum_k gamma**k r_k over the n steps
    next_observations: dict[str, torch.Tensor]
    next_masks: torch.Tensor  # (B, A) bool: actions allowed in the bootstrap state
    dones: torch.Tensor  # (B,) float32: 1 if the episode terminated within the n steps
    discounts: torch.Tensor  # (B,) float32: gamma**k applied to the bootstrap value

    @classmethod
    def from_arrays(cls, batch: Transitions) -> ReplayBatch:
        """The same minibatch as tensors sharing the arrays' memory (no copy)."""
        return cls(
            observations={k: torch.from_numpy(v) for k, v in batch.observations.items()},
            masks=torch.from_numpy(batch.masks),
            actions=torch.from_numpy(batch.actions),
            rewards=torch.from_numpy(batch.rewards),
            next_observations={k: torch.from_numpy(v) for k, v in batch.next_observations.items()},
            next_masks=torch.from_numpy(batch.next_masks),
            dones=torch.from_numpy(batch.dones),
            discounts=torch.from_numpy(batch.discounts),
        )


class Transitions(NamedTuple):
    """k ready-made transitions as arrays with leading dimension k (also a sampled minibatch)."""

    observations: dict[str, NDArray[np.float32]]
    masks: NDArray[np.bool_]
    actions: NDArray[np.int64]
    rewards: NDArray[np.float32]
    next_observations: dict[str, NDArray[np.float32]]
    next_masks: NDArray[np.bool_]
    dones: NDArray[np.float32]
    discounts: NDArray[np.float32]


class ReplayBuffer:
    """Fixed-capacity circular storage; the oldest transitions are overwritten."""

    def __init__(
        self,
        obs_shapes: Mapping[str, tuple[int, ...]],
        n_actions: int,
        capacity: int,
        rng: np.random.Generator,
    ) -> None:
        if capacity < 1:
            raise ValueError("replay buffer capacity must be at least 1")
        self.capacity = capacity
        self._rng = rng
        self._obs = {k: np.zeros((capacity, *s), np.float32) for k, s in obs_shapes.items()}
        self._next_obs = {k: np.zeros((capacity, *s), np.float32) for k, s in obs_shapes.items()}
        self._masks = np.zeros((capacity, n_actions), np.bool_)
        self._next_masks = np.zeros((capacity, n_actions), np.bool_)
        self._actions = np.zeros(capacity, np.int64)
        self._rewards = np.zeros(capacity, np.float32)
        self._dones = np.zeros(capacity, np.float32)
        self._discounts = np.zeros(capacity, np.float32)
        self._position = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, batch: Transitions) -> None:
        """Append k transitions, wrapping around when full."""
        k = len(batch.actions)
        if k == 0:
            return
        if k > self.capacity:  # only the newest `capacity` can survive anyway
            batch = _tail(batch, self.capacity)
            k = self.capacity
        index = (self._position + np.arange(k)) % self.capacity
        for key, store in self._obs.items():
            store[index] = batch.observations[key]
            self._next_obs[key][index] = batch.next_observations[key]
        self._masks[index] = batch.masks
        self._next_masks[index] = batch.next_masks
        self._actions[index] = batch.actions
        self._rewards[index] = batch.rewards
        self._dones[index] = batch.dones
        self._discounts[index] = batch.discounts
        self._position = int((self._position + k) % self.capacity)
        self._size = min(self._size + k, self.capacity)

    def sample(self, batch_size: int) -> Transitions:
        """Uniform sample with replacement (indices from the seeded Generator), as arrays.

        Arrays, not tensors: the learner's step runs in NumPy (rl/numpy_learner.py);
        `ReplayBatch.from_arrays` gives tensors without copying.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        index = self._rng.integers(0, self._size, size=batch_size)
        return Transitions(
            observations={k: v[index] for k, v in self._obs.items()},
            masks=self._masks[index],
            actions=self._actions[index],
            rewards=self._rewards[index],
            next_observations={k: v[index] for k, v in self._next_obs.items()},
            next_masks=self._next_masks[index],
            dones=self._dones[index],
            discounts=self._discounts[index],
        )


def _tail(batch: Transitions, n: int) -> Transitions:
    """The last n transitions of a batch."""
    return Transitions(
        observations={k: v[-n:] for k, v in batch.observations.items()},
        masks=batch.masks[-n:],
        actions=batch.actions[-n:],
        rewards=batch.rewards[-n:],
        next_observations={k: v[-n:] for k, v in batch.next_observations.items()},
        next_masks=batch.next_masks[-n:],
        dones=batch.dones[-n:],
        discounts=batch.discounts[-n:],
    )


class _Pending(NamedTuple):
    observation: dict[str, NDArray[np.float32]]
    mask: NDArray[np.bool_]
    action: int
    reward: float


class _Ready(NamedTuple):
    first: _Pending  # reward holds the discounted n-step sum
    next_observation: dict[str, NDArray[np.float32]]
    next_mask: NDArray[np.bool_]
    done: float
    horizon: int


class NStepAccumulator:
    """Turns per-step vector-env transitions into n-step transitions, per environment.

    A transition leaves once n later rewards are known (bootstrap from the state
    n steps ahead, discount gamma**n), or when its episode ends: then every
    pending transition leaves with the rewards that remain, `done` = terminated
    (a truncated episode still bootstraps from its final observation).
    """

    def __init__(self, n_step: int, gamma: float, num_envs: int) -> None:
        if n_step < 1:
            raise ValueError("n_step must be at least 1")
        self.n_step = n_step
        self.gamma = gamma
        self._pending: list[deque[_Pending]] = [deque() for _ in range(num_envs)]

    def push(
        self,
        observations: ArrayObs,
        masks: NDArray[np.bool_],
        actions: NDArray[np.int64],
        rewards: NDArray[np.floating],
        *,
        next_observations: ArrayObs,
        next_masks: NDArray[np.bool_],
        terminated: NDArray[np.bool_],
        episode_over: NDArray[np.bool_],
    ) -> Transitions | None:
        """Add one step of every env; return the transitions that are complete (or None)."""
        ready: list[_Ready] = []
        for env, pending in enumerate(self._pending):
            observation = {k: v[env].copy() for k, v in observations.items()}
            pending.append(
                _Pending(observation, masks[env].copy(), int(actions[env]), float(rewards[env]))
            )
            nxt = {k: v[env] for k, v in next_observations.items()}
            if episode_over[env]:
                done = 1.0 if terminated[env] else 0.0
                while pending:
                    ready.append(self._pop_oldest(pending, nxt, next_masks[env], done))
            elif len(pending) == self.n_step:
                ready.append(self._pop_oldest(pending, nxt, next_masks[env], 0.0))
        return self._stack(ready) if ready else None

    def _pop_oldest(
        self,
        pending: deque[_Pending],
        next_observation: dict[str, NDArray[np.float32]],
        next_mask: NDArray[np.bool_],
        done: float,
    ) -> _Ready:
        """The oldest pending step with its reward replaced by the discounted sum of all pending."""
        total = sum(self.gamma**i * step.reward for i, step in enumerate(pending))
        horizon = len(pending)
        first = pending.popleft()
        return _Ready(first._replace(reward=total), next_observation, next_mask, done, horizon)

    def _stack(self, ready: list[_Ready]) -> Transitions:
        keys = ready[0].first.observation.keys()
        return Transitions(
            observations={k: np.stack([r.first.observation[k] for r in ready]) for k in keys},
            masks=np.stack([r.first.mask for r in ready]),
            actions=np.array([r.first.action for r in ready], np.int64),
            rewards=np.array([r.first.reward for r in ready], np.float32),
            next_observations={k: np.stack([r.next_observation[k] for r in ready]) for k in keys},
            next_masks=np.stack([r.next_mask for r in ready]),
            dones=np.array([r.done for r in ready], np.float32),
            discounts=np.array([self.gamma**r.horizon for r in ready], np.float32),
        )
