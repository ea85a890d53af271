"""`action_probs` is exact: it matches what each policy actually chooses, by construction or
by sampling frequencies; and a scenario's fingerprint identifies its parameters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dispatchloop.rl.card import scenario_fingerprint
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import DQNPolicy, SoftmaxPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

WORLD = Scenario.default()


def _observations(n: int = 64) -> dict[str, np.ndarray]:
    env = VecDispatchEnv(WORLD, RewardSettings(), n)
    obs = env.reset(list(range(n)))
    obs, *_ = env.step(GreedyPolicy().act_batch(obs))  # a busier second booking
    return obs


def _network(seed: int) -> CandidateQNetwork:
    import torch

    torch.manual_seed(seed)
    return CandidateQNetwork(16, 1)


def test_deterministic_policies_are_one_hot_on_their_choice() -> None:
    obs = _observations()
    for policy in (GreedyPolicy(), DQNPolicy(_network(0))):
        probs = policy.action_probs(obs)
        assert np.array_equal(probs.argmax(axis=1), policy.act_batch(obs))
        assert np.all(probs.sum(axis=1) == 1.0) and np.all(probs.max(axis=1) == 1.0)


def test_mixtures_sum_to_one_on_eligible_drivers_and_match_their_frequencies() -> None:
    obs = _observations(8)
    mask = obs["action_mask"].astype(bool)
    for policy in (
        EpsilonGreedyPolicy(GreedyPolicy(), 0.3, seed=1),
        SoftmaxPolicy(DQNPolicy(_network(1)), temperature=0.05, seed=1),
        RandomPolicy(1),
    ):
        probs = policy.action_probs(obs)
        assert np.allclose(probs.sum(axis=1), 1.0) and np.all(probs[~mask] == 0.0)
        draws = np.stack([policy.act_batch(obs) for _ in range(4_000)])
        freq = np.stack([(draws == a).mean(axis=0) for a in range(mask.shape[1])], axis=1)
        # 4,000 draws: a binomial share is within 0.03 of its probability (> 4 sigma).
        assert np.abs(freq - probs).max() < 0.03, policy.name


def test_nan_weights_give_nan_probabilities_not_a_silent_choice() -> None:
    import torch

    network = _network(2)
    with torch.no_grad():
        next(network.parameters()).fill_(float("nan"))
    assert np.isnan(DQNPolicy(network).action_probs(_observations(4))).all()


def test_epsilon_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedyPolicy(GreedyPolicy(), 1.5)


def test_scenario_fingerprint_is_stable_and_sensitive() -> None:
    same = Scenario.from_dict(WORLD.to_dict())
    other = dataclasses.replace(WORLD, n_drivers=10)
    assert WORLD.fingerprint() == same.fingerprint()
    assert WORLD.fingerprint() != other.fingerprint()
    assert len(WORLD.fingerprint()) == 64
    # The same hash a model card records for the scenario it was trained in.
    assert WORLD.fingerprint() == scenario_fingerprint(WORLD.to_dict())
