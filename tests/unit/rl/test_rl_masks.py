"""Masks are respected everywhere: exploration, greedy policy and the TD target's max."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dispatchloop.decisions.featurizer import N_CANDIDATE_FEATURES, N_CONTEXT_FEATURES
from dispatchloop.decisions.scorer import MASKED_Q
from dispatchloop.rl.buffer import ReplayBatch
from dispatchloop.rl.dqn import select_actions, td_targets
from dispatchloop.rl.networks import CandidateQNetwork, Observation, QNetwork
from dispatchloop.rl.policy import DQNPolicy, NoEligibleActionError

NETWORK = CandidateQNetwork(16, 1)


@st.composite
def masks(draw: Any, max_envs: int = 6, max_n: int = 12) -> np.ndarray:
    n_envs = draw(st.integers(1, max_envs))
    n = draw(st.integers(1, max_n))
    mask = draw(arrays(np.bool_, (n_envs, n)))
    forced = draw(st.integers(0, n - 1))
    mask[:, forced] = mask[:, forced] | ~mask.any(axis=1)  # at least one eligible per row
    return mask


def _obs(mask: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    envs, n = mask.shape
    return {
        "candidates": rng.normal(size=(envs, n, N_CANDIDATE_FEATURES)).astype(np.float32),
        "context": rng.normal(size=(envs, N_CONTEXT_FEATURES)).astype(np.float32),
    }


@settings(max_examples=60, deadline=None)
@given(mask=masks(), epsilon=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_epsilon_greedy_never_picks_a_masked_action(
    mask: np.ndarray, epsilon: float, seed: int
) -> None:
    obs = _obs(mask, seed)
    actions = select_actions(NETWORK, obs, mask, epsilon, np.random.default_rng(seed))
    assert mask[np.arange(len(mask)), actions].all()


@settings(max_examples=60, deadline=None)
@given(mask=masks(), seed=st.integers(0, 2**16))
def test_greedy_policy_never_picks_a_masked_action(mask: np.ndarray, seed: int) -> None:
    obs = {**_obs(mask, seed), "action_mask": mask.astype(np.int8)}
    actions = DQNPolicy(NETWORK).act_batch(obs)
    assert mask[np.arange(len(mask)), actions].all()
    single = DQNPolicy(NETWORK).act({k: v[0] for k, v in obs.items()})
    assert mask[0, single]


def test_exploration_covers_every_eligible_action() -> None:
    mask = np.array([[True, False, True, False, True]] * 400)
    actions = select_actions(NETWORK, _obs(mask, 0), mask, 1.0, np.random.default_rng(0))
    assert set(actions.tolist()) == {0, 2, 4}


def test_policy_refuses_an_observation_without_eligible_action() -> None:
    mask = np.zeros((1, 4), np.bool_)
    with pytest.raises(NoEligibleActionError):
        DQNPolicy(NETWORK).act_batch({**_obs(mask, 0), "action_mask": mask})


class TableQ(QNetwork):
    """Fixed Q-values per action, whatever the state (pure-logic fake for the target test)."""

    kind = "table"

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = torch.tensor(values)

    def q_values(self, obs: Observation, mask: torch.Tensor) -> torch.Tensor:
        q = self.values.expand(mask.shape[0], -1)
        return torch.where(mask, q, torch.full_like(q, MASKED_Q))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}


def _batch(next_mask: list[bool], done: float = 0.0) -> ReplayBatch:
    obs = {"obs": torch.zeros(1, 1)}
    m = torch.tensor([next_mask])
    return ReplayBatch(
        observations=obs,
        masks=torch.ones_like(m),
        actions=torch.tensor([0]),
        rewards=torch.tensor([1.0]),
        next_observations=obs,
        next_masks=m,
        dones=torch.tensor([done]),
        discounts=torch.tensor([0.5]),
    )


@pytest.mark.parametrize("double_q", [True, False])
def test_target_max_ignores_masked_next_actions(double_q: bool) -> None:
    online, target = TableQ([9.0, 1.0, 3.0]), TableQ([10.0, 2.0, 4.0])
    # Action 0 is best but masked in s': the target must use action 2.
    result = td_targets(online, target, _batch([False, True, True]), double_q)
    assert result.tolist() == [1.0 + 0.5 * 4.0]


def test_double_q_lets_the_online_network_choose() -> None:
    online, target = TableQ([1.0, 5.0, 3.0]), TableQ([1.0, 2.0, 8.0])
    assert td_targets(online, target, _batch([True, True, True]), True).tolist() == [2.0]
    assert td_targets(online, target, _batch([True, True, True]), False).tolist() == [5.0]


def test_terminal_and_empty_next_states_do_not_bootstrap() -> None:
    online = target = TableQ([1.0, 5.0, 3.0])
    assert td_targets(online, target, _batch([True, True, True], done=1.0), True).tolist() == [1.0]
    assert td_targets(online, target, _batch([False, False, False]), True).tolist() == [1.0]
