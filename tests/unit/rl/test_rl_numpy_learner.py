"""The NumPy DQN step is the PyTorch reference step: same loss, gradients, clipping, Adam.

The reference is `dqn.dqn_loss` + autograd + `clip_grad_norm_` + `torch.optim.Adam`
(fused), i.e. `Learner(..., torch_reference=True)`. Tolerances are float32 ones:
the two sum in different orders.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from dispatchloop.decisions.scorer import MASKED_Q
from dispatchloop.replay.transitions import LoggedTransition
from dispatchloop.rl.buffer import ReplayBatch, Transitions
from dispatchloop.rl.dqn import (
    Learner,
    TrainingDivergedError,
    dqn_loss,
    select_actions,
    train_dispatch,
    train_gym,
    train_offline,
)
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.rl.networks import (
    CandidateQNetwork,
    FlatQNetwork,
    Observation,
    QNetwork,
)
from dispatchloop.rl.numpy_learner import (
    Adam,
    NumpyDQNStep,
    NumpyQFunction,
    dqn_loss_and_grad,
    numpy_q_function,
)
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario

N_CAND, F_CAND, F_CTX, OBS_DIM, N_ACTIONS = 7, 5, 3, 6, 4


def _masks(rng: np.random.Generator, batch: int, n: int, allow_empty: bool) -> np.ndarray:
    mask = rng.random((batch, n)) < 0.6
    if not allow_empty:
        mask[np.arange(batch), rng.integers(0, n, batch)] = True
    else:  # some bootstrap states have nothing eligible
        mask[: batch // 8] = False
    return mask


def _batch(rng: np.random.Generator, kind: str, batch: int = 32) -> Transitions:
    n = N_CAND if kind == "candidate" else N_ACTIONS

    def obs() -> dict[str, np.ndarray]:
        if kind == "candidate":
            return {
                "candidates": rng.normal(size=(batch, n, F_CAND)).astype(np.float32),
                "context": rng.normal(size=(batch, F_CTX)).astype(np.float32),
            }
        return {"obs": rng.normal(size=(batch, OBS_DIM)).astype(np.float32)}

    masks = _masks(rng, batch, n, allow_empty=False)
    actions = np.array([rng.choice(np.flatnonzero(row)) for row in masks], np.int64)
    return Transitions(
        observations=obs(),
        masks=masks,
        actions=actions,
        # Large enough that some TD errors fall outside Huber's quadratic zone.
        rewards=(3.0 * rng.normal(size=batch)).astype(np.float32),
        next_observations=obs(),
        next_masks=_masks(rng, batch, n, allow_empty=True),
        dones=(rng.random(batch) < 0.2).astype(np.float32),
        discounts=np.full(batch, 0.97, np.float32),
    )


def _network(kind: str, dueling: bool, activation: str, n_layers: int) -> QNetwork:
    if kind == "candidate":
        return CandidateQNetwork(
            16,
            n_layers,
            activation=activation,
            dueling=dueling,
            n_candidate_features=F_CAND,
            n_context_features=F_CTX,
        )
    return FlatQNetwork(OBS_DIM, N_ACTIONS, 16, n_layers, activation=activation, dueling=dueling)


class Case(NamedTuple):
    kind: str
    dueling: bool
    activation: str
    n_layers: int
    double_q: bool
    cql: float


DEMAND = Scenario.default().arrays.demand  # the world the logged transitions come from
CASES = {
    "flat-double": Case("flat", False, "relu", 2, True, 0.0),
    "flat-dueling": Case("flat", True, "relu", 2, True, 0.0),
    "flat-dueling-tanh-1layer-noDouble": Case("flat", True, "tanh", 1, False, 0.0),
    "flat-cql": Case("flat", False, "relu", 2, True, 1.0),
    "candidate-dueling": Case("candidate", True, "relu", 2, True, 0.0),
    "candidate-plain": Case("candidate", False, "relu", 2, True, 0.0),
    "candidate-tanh-1layer-noDouble": Case("candidate", True, "tanh", 1, False, 0.0),
    "candidate-dueling-cql": Case("candidate", True, "relu", 2, True, 1.0),
    "candidate-3layers-cql": Case("candidate", True, "relu", 3, True, 0.5),
}


def _perturbed_copy(network: QNetwork, seed: int) -> QNetwork:
    """A target network that differs from the online one (as it does between syncs)."""
    target = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return target


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_loss_and_gradients_match_autograd(case: Case) -> None:
    kind, dueling, activation, n_layers, double_q, cql = case
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    reference = _network(kind, dueling, activation, n_layers)
    reference_target = _perturbed_copy(reference, 1)
    batch = _batch(rng, kind)

    loss, q_taken = dqn_loss(
        reference, reference_target, ReplayBatch.from_arrays(batch), double_q, cql
    )
    loss.backward()  # type: ignore[no-untyped-call]
    expected = {name: p.grad for name, p in reference.named_parameters()}

    online = numpy_q_function(copy.deepcopy(reference))
    target = numpy_q_function(copy.deepcopy(reference_target))
    assert online is not None and target is not None
    result = dqn_loss_and_grad(online, target, batch, double_q, cql)
    online.backward(result.cache, result.d_q)

    assert result.loss == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert result.q_abs_max == pytest.approx(float(q_taken.detach().abs().max()), rel=1e-6)
    assert set(online.params.grad) == set(expected)
    for name, grad in expected.items():
        assert grad is not None
        np.testing.assert_allclose(
            online.params.grad[name], grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name
        )
    # Masked actions get no gradient: their Q is the constant MASKED_Q.
    assert np.all(result.d_q[~batch.masks] == 0.0)


def test_adam_matches_torch_adam_step_for_step() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=50).astype(np.float32)
    reference = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = torch.optim.Adam([reference], lr=3e-3, fused=True)
    params = start.copy()
    adam = Adam(params, lr=3e-3)
    for step in range(20):
        grad = (rng.normal(size=50) * 10.0 ** rng.integers(-4, 2)).astype(np.float32)
        reference.grad = torch.from_numpy(grad.copy())
        optimizer.step()
        adam.step(grad)
        np.testing.assert_allclose(
            params, reference.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=f"step {step}"
        )


def _learner_pair(
    kind: str, dueling: bool, activation: str, config: DQNConfig
) -> tuple[Learner, Learner]:
    torch.manual_seed(0)
    network = _network(kind, dueling, activation, config.n_layers)
    fast = Learner(copy.deepcopy(network), config)
    slow = Learner(copy.deepcopy(network), config, torch_reference=True)
    assert fast.uses_numpy and not slow.uses_numpy
    return fast, slow


@pytest.mark.parametrize(
    ("case", "tau", "max_grad_norm"),
    [
        (Case("flat", False, "relu", 2, True, 0.0), 1.0, 10.0),
        (Case("flat", True, "tanh", 2, True, 0.0), 0.3, 0.05),  # soft target, clipping on
        (Case("candidate", True, "relu", 2, True, 1.0), 1.0, 10.0),
        (Case("candidate", False, "tanh", 2, False, 0.0), 0.3, 0.05),
    ],
)
def test_training_steps_match_the_torch_reference(
    case: Case, tau: float, max_grad_norm: float
) -> None:
    """Whole `Learner.update`s: loss, clipping, Adam, target updates; weights stay equal."""
    kind, dueling, activation, n_layers, double_q, cql = case
    config = DQNConfig(
        learning_rate=1e-3,
        hidden_size=16,
        n_layers=n_layers,
        double_q=double_q,
        target_update_interval=2,
        tau=tau,
        max_grad_norm=max_grad_norm,
    )
    fast, slow = _learner_pair(kind, dueling, activation, config)
    rng = np.random.default_rng(1)
    for step in range(8):
        batch = _batch(rng, kind)
        assert fast.update(batch, cql) == pytest.approx(slow.update(batch, cql), rel=1e-4), step
    for name, expected in slow.q_network.state_dict().items():
        if kind == "candidate" and dueling and name == "advantage.bias":
            # Its gradient is exactly 0 mathematically (the bias cancels in A - mean A);
            # both compute rounding noise of either sign, which Adam scales up to ±lr.
            continue
        for ours, theirs in (
            (fast.q_network.state_dict()[name], expected),
            (fast.target_network.state_dict()[name], slow.target_network.state_dict()[name]),
        ):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=2e-5)


def test_the_torch_module_shares_the_numpy_weights() -> None:
    """Callbacks (evaluation, checkpoints) read the torch module while NumPy trains it."""
    fast, _ = _learner_pair("candidate", True, "relu", DQNConfig(hidden_size=16))
    before = {k: v.clone() for k, v in fast.q_network.state_dict().items()}
    fast.update(_batch(np.random.default_rng(2), "candidate"))
    after = fast.q_network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    batch = _batch(np.random.default_rng(3), "candidate")
    step = fast._step
    assert isinstance(step, NumpyDQNStep)
    with torch.no_grad():
        torch_q = fast.q_network.q_values(
            ReplayBatch.from_arrays(batch).observations, torch.from_numpy(batch.masks)
        )
    np.testing.assert_allclose(
        step.online.q_values(batch.observations, batch.masks), torch_q.numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["flat", "candidate"])
@pytest.mark.parametrize("poison", ["reward", "observation"])
def test_nan_or_inf_raises_and_leaves_the_weights_alone(kind: str, poison: str) -> None:
    fast, _ = _learner_pair(kind, True, "relu", DQNConfig(hidden_size=16))
    batch = _batch(np.random.default_rng(4), kind)
    if poison == "reward":
        batch.rewards[3] = np.inf
    else:
        next(iter(batch.observations.values()))[3] = np.nan
    before = {k: v.clone() for k, v in fast.q_network.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="diverged at gradient step 1"):
        fast.update(batch)
    for name, tensor in fast.q_network.state_dict().items():
        assert torch.equal(before[name], tensor), name
    assert fast.gradient_steps == 0


def test_exploding_q_values_raise() -> None:
    fast, _ = _learner_pair("flat", False, "relu", DQNConfig(hidden_size=16))
    batch = _batch(np.random.default_rng(5), "flat")
    with torch.no_grad():
        for p in fast.q_network.parameters():
            p.mul_(1e3)  # in place: the NumPy weights see it too
    with pytest.raises(TrainingDivergedError, match=r"\|Q\| reached"):
        fast.update(batch)


class _LinearQ(QNetwork):
    """A network kind without a NumPy twin."""

    kind = "linear"

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(OBS_DIM, N_ACTIONS)

    def q_values(self, obs: Observation, mask: torch.Tensor) -> torch.Tensor:
        q = self.layer(obs["obs"])
        return torch.where(mask, q, torch.full_like(q, MASKED_Q))

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}


def test_other_network_kinds_train_with_the_torch_reference_step() -> None:
    learner = Learner(_LinearQ(), DQNConfig(learning_rate=1e-2))
    assert not learner.uses_numpy
    before = learner.q_network.state_dict()["layer.weight"].clone()
    assert np.isfinite(learner.update(_batch(np.random.default_rng(6), "flat")))
    assert not torch.equal(before, learner.q_network.state_dict()["layer.weight"])


def test_acting_with_the_numpy_twin_picks_what_the_torch_network_picks() -> None:
    fast, _ = _learner_pair("candidate", True, "relu", DQNConfig(hidden_size=16))
    batch = _batch(np.random.default_rng(7), "candidate", batch=200)
    ours = select_actions(
        fast.actor, batch.observations, batch.masks, 0.0, np.random.default_rng(0)
    )
    theirs = select_actions(
        fast.q_network, batch.observations, batch.masks, 0.0, np.random.default_rng(0)
    )
    assert isinstance(fast.actor, NumpyQFunction)
    np.testing.assert_array_equal(ours, theirs)


def test_every_training_entry_point_runs_the_numpy_step(
    monkeypatch: pytest.MonkeyPatch, logged_transitions: Callable[[int], list[LoggedTransition]]
) -> None:
    """The fast step is the one training uses, not a benchmark-only path."""
    calls: list[str] = []
    original = NumpyDQNStep.compute

    def counting(self: NumpyDQNStep, batch: Transitions, cql_alpha: float) -> Any:
        calls.append(type(self.online).__name__)
        return original(self, batch, cql_alpha)

    monkeypatch.setattr(NumpyDQNStep, "compute", counting)
    small = DQNConfig(hidden_size=16, learning_starts=50, batch_size=16, buffer_size=1_000)
    gym = train_gym(small, "CartPole-v1", 100, seed=0)
    assert calls == ["FlatQFunction"] * gym.gradient_steps and gym.gradient_steps > 0
    calls.clear()
    dispatch = train_dispatch(small, Scenario.default(), RewardSettings(), 100, seed=0, num_envs=2)
    assert calls == ["CandidateQFunction"] * dispatch.gradient_steps and calls
    calls.clear()
    data = LoggedDataset.from_transitions(logged_transitions(30), RewardSettings(), DEMAND)
    offline = train_offline(small, data, gradient_steps=5, seed=0)
    assert calls == ["CandidateQFunction"] * 5 and offline.gradient_steps == 5
