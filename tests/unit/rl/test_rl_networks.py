"""Q-networks: masking, shared-weight transfer from 9 to 40 candidates, NumPy twin, rebuild."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatchloop.decisions.featurizer import (
    CANDIDATE_FEATURES,
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
)
from dispatchloop.decisions.scorer import MASKED_Q
from dispatchloop.rl.buffer import Transitions
from dispatchloop.rl.dqn import Learner
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import (
    CandidateQNetwork,
    FlatQNetwork,
    build_network,
)
from dispatchloop.rl.policy import DQNPolicy, numpy_scorer

ETA = CANDIDATE_FEATURES.index("eta_h")


def _inputs(
    rng: np.random.Generator, batch: int, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    candidates = rng.normal(size=(batch, n, N_CANDIDATE_FEATURES)).astype(np.float32)
    context = rng.normal(size=(batch, N_CONTEXT_FEATURES)).astype(np.float32)
    mask = rng.random((batch, n)) < 0.7
    mask[:, 0] = True
    return candidates, context, mask


def test_masked_positions_get_the_masked_value_and_others_are_finite() -> None:
    rng = np.random.default_rng(0)
    net = CandidateQNetwork(32, 2)
    c, x, m = _inputs(rng, 5, 9)
    q = net(torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(m)).detach().numpy()
    assert q.shape == (5, 9)
    assert np.all(q[~m] == MASKED_Q)
    assert np.all(np.isfinite(q[m])) and np.all(q[m] > MASKED_Q / 2)


def test_masked_candidates_do_not_change_eligible_scores() -> None:
    """Padding or ineligible rows must not leak into the pooled value of eligible ones."""
    rng = np.random.default_rng(1)
    net = CandidateQNetwork(32, 2)
    c, x, m = _inputs(rng, 1, 9)
    q1 = net(torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(m)).detach()
    c2 = c.copy()
    c2[~m] = 123.0  # garbage in masked rows
    q2 = net(torch.from_numpy(c2), torch.from_numpy(x), torch.from_numpy(m)).detach()
    torch.testing.assert_close(q1, q2)


def _train_bandit(net: CandidateQNetwork, n: int, steps: int) -> None:
    """Contextual bandit (gamma 0): reward = -10 * eta of the chosen candidate."""
    rng = np.random.default_rng(2)
    learner = Learner(net, DQNConfig(learning_rate=3e-3, batch_size=128, target_update_interval=1))
    for _ in range(steps):
        c, x, m = _inputs(rng, 128, n)
        actions = np.array([rng.choice(np.flatnonzero(row)) for row in m])
        rewards = -10.0 * c[np.arange(128), actions, ETA]
        obs = {"candidates": c, "context": x}
        learner.update(
            Transitions(
                observations=obs,
                masks=m,
                actions=actions.astype(np.int64),
                rewards=rewards.astype(np.float32),
                next_observations=obs,
                next_masks=m,
                dones=np.ones(128, np.float32),
                discounts=np.zeros(128, np.float32),
            )
        )


def test_a_network_trained_on_9_candidates_serves_40() -> None:
    torch.manual_seed(0)
    net = CandidateQNetwork(64, 2)
    _train_bandit(net, n=9, steps=300)
    rng = np.random.default_rng(3)
    c, x, m = _inputs(rng, 200, 40)
    chosen = DQNPolicy(net).act_batch({"candidates": c, "context": x, "action_mask": m})
    assert chosen.shape == (200,)
    assert m[np.arange(200), chosen].all()
    best = np.where(m, c[..., ETA], np.inf).argmin(axis=1)
    # Picks the lowest-ETA eligible driver among 40 in most cases; random would be ~1/28.
    assert (chosen == best).mean() > 0.6
    eta_rank = (np.where(m, c[..., ETA], np.inf) < c[np.arange(200), chosen, ETA][:, None]).sum(1)
    assert np.median(eta_rank) <= 1


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 45),
    batch=st.integers(1, 4),
    dueling=st.booleans(),
    activation=st.sampled_from(["relu", "tanh"]),
    seed=st.integers(0, 10_000),
)
def test_numpy_scorer_matches_pytorch(
    n: int, batch: int, dueling: bool, activation: str, seed: int
) -> None:
    torch.manual_seed(seed)
    net = CandidateQNetwork(16, 2, activation=activation, dueling=dueling)
    c, x, m = _inputs(np.random.default_rng(seed), batch, n)
    expected = net(torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(m)).detach().numpy()
    got = numpy_scorer(net).q_values(c, x, m)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 45),
    batch=st.integers(1, 4),
    dueling=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_greedy_decisions_from_advantages_are_the_argmax_of_q(
    n: int, batch: int, dueling: bool, seed: int
) -> None:
    """`DQNPolicy.act_batch` skips the value head; its choice must still maximise Q."""
    torch.manual_seed(seed)
    net = CandidateQNetwork(16, 2, dueling=dueling)
    c, x, m = _inputs(np.random.default_rng(seed), batch, n)
    q = net(torch.from_numpy(c), torch.from_numpy(x), torch.from_numpy(m)).detach().numpy()
    chosen = DQNPolicy(net).act_batch({"candidates": c, "context": x, "action_mask": m})
    assert m[np.arange(batch), chosen].all()
    best_q = np.where(m, q, -np.inf).max(axis=1)
    # Equal up to float32 rounding: V + a_i - mean(a) may tie two nearly equal a_i.
    np.testing.assert_allclose(q[np.arange(batch), chosen], best_q, rtol=0, atol=1e-5)


def test_spec_rebuilds_the_same_architecture() -> None:
    for net in (
        CandidateQNetwork(24, 3, activation="tanh", dueling=False),
        FlatQNetwork(4, 2, 16, 1, dueling=True),
    ):
        rebuilt = build_network(net.spec())
        rebuilt.load_state_dict(net.state_dict())
        assert rebuilt.spec() == net.spec()
        assert type(rebuilt) is type(net)


def test_unknown_network_kind_is_refused() -> None:
    try:
        build_network({"kind": "transformer"})
    except ValueError as exc:
        assert "transformer" in str(exc)
    else:
        raise AssertionError("an unknown kind must be refused")
