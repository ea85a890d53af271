"""`DQNPolicy`: the greedy (masked argmax) policy of a Q-network, for the simulator and serving.

It implements the simulator's `Policy` protocol (`name`, `begin_episode`,
`act`, `act_batch`). For a `CandidateQNetwork` it scores with a NumPy copy of
the weights: a single decision is a handful of small matmuls, and NumPy does
them several times faster than PyTorch's per-op dispatch (MEASUREMENTS.md).
The NumPy path is tested to agree with the PyTorch network.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from dispatchloop.decisions.scorer import CandidateScorer
from dispatchloop.rl.networks import CandidateQNetwork, QNetwork
from dispatchloop.sim.policies import LoggingPolicy, one_hot

ObsDict = Mapping[str, NDArray[np.generic]]


class NoEligibleActionError(ValueError):
    """Every action is masked: there is nothing a policy may choose."""


def numpy_scorer(network: CandidateQNetwork) -> CandidateScorer:
    """The NumPy twin of a PyTorch candidate network (the scorer serving runs)."""
    state = {name: t.detach().numpy() for name, t in network.state_dict().items()}
    return CandidateScorer.from_state(state, network.spec())


def masked_argmax(q: NDArray[np.floating], mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Row-wise argmax over allowed actions only; a row without any is an error."""
    if not mask.any(axis=-1).all():
        raise NoEligibleActionError("an observation has no eligible action (mask is all zero)")
    return np.asarray(np.where(mask, q, -np.inf).argmax(axis=-1), dtype=np.int64)


class DQNPolicy:
    """Greedy policy of a Q-network; never picks a masked action."""

    def __init__(self, q_network: QNetwork, name: str = "dqn") -> None:
        self.name = name
        self._network = q_network
        self._numpy = numpy_scorer(q_network) if isinstance(q_network, CandidateQNetwork) else None

    def begin_episode(self, plan: object) -> None:
        """The episode plan is hindsight information; a deployable policy ignores it."""

    def act(self, obs: ObsDict) -> int:
        batched = {k: np.asarray(v)[None] for k, v in obs.items()}
        return int(self.act_batch(batched)[0])

    def act_batch(self, obs: ObsDict) -> NDArray[np.int64]:
        mask = np.asarray(obs["action_mask"]).astype(np.bool_)
        if self._numpy is not None:
            scores = self._numpy.ranking_scores(
                np.asarray(obs["candidates"], np.float32), np.asarray(obs["context"], np.float32)
            )
            return masked_argmax(scores, mask)
        return masked_argmax(self.q_values(obs, mask), mask)

    def scores(self, obs: ObsDict) -> NDArray[np.float64]:
        """(B, n) scores whose masked argmax is the decision (advantages or Q), -inf masked."""
        mask = np.asarray(obs["action_mask"]).astype(np.bool_)
        if self._numpy is not None:
            raw = self._numpy.ranking_scores(
                np.asarray(obs["candidates"], np.float32), np.asarray(obs["context"], np.float32)
            )
        else:
            raw = self.q_values(obs, mask)
        return np.where(mask, raw.astype(np.float64), -np.inf)

    def action_probs(self, obs: ObsDict) -> NDArray[np.float64]:
        """One-hot over the masked argmax (what `act_batch` picks); NaN rows if scores are not
        finite, so a diverged network is caught instead of silently choosing the first driver."""
        scores = self.scores(obs)
        mask = np.asarray(obs["action_mask"]).astype(np.bool_)
        probs = one_hot(masked_argmax(scores, mask), mask.shape[1])
        broken = ~np.isfinite(np.where(mask, scores, 0.0)).all(axis=1)
        probs[broken] = np.nan
        return probs

    def q_values(self, obs: ObsDict, mask: NDArray[np.bool_]) -> NDArray[np.float32]:
        """Masked Q-values of stacked observations (NumPy path for candidate networks)."""
        if self._numpy is not None:
            return self._numpy.q_values(
                np.asarray(obs["candidates"], np.float32),
                np.asarray(obs["context"], np.float32),
                mask,
            )
        tensors = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in obs.items()}
        with torch.no_grad():
            q = self._network.q_values(tensors, torch.from_numpy(mask))
        return q.numpy()


class SoftmaxPolicy:
    """Samples a driver with probability softmax(score / temperature) over eligible drivers.

    The stochastic counterpart of `DQNPolicy` (a Boltzmann explorer); its
    `action_probs` are the exact sampling probabilities, so off-policy estimators
    can use it as a logger or as a target. Seeded, so runs repeat.
    """

    def __init__(self, greedy: DQNPolicy, temperature: float, seed: int = 0) -> None:
        if not temperature > 0.0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.greedy = greedy
        self.temperature = temperature
        self.name = f"{greedy.name}-softmax{temperature:g}"
        self._rng = np.random.default_rng([seed, 3])

    def begin_episode(self, plan: object) -> None:
        """A deployable policy ignores the hindsight plan."""

    def act(self, obs: ObsDict) -> int:
        return int(self.act_batch({k: np.asarray(v)[None] for k, v in obs.items()})[0])

    def act_batch(self, obs: ObsDict) -> NDArray[np.int64]:
        cumulative = np.cumsum(np.nan_to_num(self.action_probs(obs)), axis=1)
        draws = self._rng.random((cumulative.shape[0], 1)) * cumulative[:, -1:]
        chosen = (cumulative <= draws).sum(axis=1)
        return np.asarray(np.minimum(chosen, cumulative.shape[1] - 1), dtype=np.int64)

    def action_probs(self, obs: ObsDict) -> NDArray[np.float64]:
        scores = self.greedy.scores(obs) / self.temperature
        top = np.max(scores, axis=1, keepdims=True)
        weights = np.exp(scores - top)  # exp(-inf) = 0 on masked drivers
        return np.asarray(weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)


def load_logging_policy(directory: Path) -> LoggingPolicy:
    """A verified model directory as the simulator's logging dispatcher (`simulate --policy DIR`).

    Raises ValueError with the loader's one sentence when the directory is refused."""
    from dispatchloop.rl.artifacts import ArtifactError, load_model  # noqa: PLC0415 - torch

    try:
        loaded = load_model(directory)
    except ArtifactError as exc:
        raise ValueError(str(exc)) from exc
    card = loaded.card
    version = card.version or card.model_version or card.model_id or directory.name
    return LoggingPolicy(DQNPolicy(loaded.q_network), "dqn", str(version))
