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

from dispatchloop.rl.networks import MASKED_Q, CandidateQNetwork, QNetwork
from dispatchloop.sim.policies import LoggingPolicy, one_hot

ObsDict = Mapping[str, NDArray[np.generic]]


class NoEligibleActionError(ValueError):
    """Every action is masked: there is nothing a policy may choose."""


class NumpyCandidateScorer:
    """Inference-only NumPy twin of a `CandidateQNetwork` (same arithmetic, float32)."""

    def __init__(self, network: CandidateQNetwork) -> None:
        def linear(layer: torch.nn.Module) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
            assert isinstance(layer, torch.nn.Linear)
            return (
                layer.weight.detach().numpy().T.astype(np.float32).copy(),
                layer.bias.detach().numpy().astype(np.float32).copy(),
            )

        encoder = [linear(m) for m in network.encoder if isinstance(m, torch.nn.Linear)]
        # First layer split into candidate and context parts: the context term is computed
        # once per decision instead of being concatenated onto every candidate row.
        first_weight, self._first_bias = encoder[0]
        self._first_candidate = first_weight[: network.n_candidate_features].copy()
        self._first_context = first_weight[network.n_candidate_features :].copy()
        self._encoder = encoder[1:]
        # The advantage head as a vector, so a 2-D matmul gives the scores directly.
        self._advantage = linear(network.advantage)
        self._value = (
            [linear(m) for m in network.value if isinstance(m, torch.nn.Linear)]
            if network.value is not None
            else None
        )
        self._tanh = network.activation == "tanh"

    def _act(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.tanh(x) if self._tanh else np.maximum(x, 0.0)

    def _embed(
        self, candidates: NDArray[np.float32], context: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings h (B·n, H) and advantages a (B, n) of every candidate, eligible or not."""
        batch, n, features = candidates.shape
        rows = candidates.reshape(batch * n, features)  # 2-D matmuls are the fast ones
        per_decision = context @ self._first_context + self._first_bias  # (B, H)
        h = (rows @ self._first_candidate).reshape(batch, n, -1) + per_decision[:, None, :]
        h = self._act(h).reshape(batch * n, -1)
        for weight, bias in self._encoder:
            h = self._act(h @ weight + bias)
        return h, (h @ self._advantage[0] + self._advantage[1]).reshape(batch, n)

    def ranking_scores(
        self, candidates: NDArray[np.float32], context: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Scores (B, n) whose masked argmax is the masked argmax of Q.

        With a dueling head Q_i = V + a_i - mean_eligible(a): V and the mean are the
        same for every candidate of a decision, so the ranking is the advantages'
        alone and a greedy decision skips the value head (a third of the work).
        """
        return self._embed(candidates, context)[1]

    def q_values(
        self,
        candidates: NDArray[np.float32],
        context: NDArray[np.float32],
        mask: NDArray[np.bool_],
    ) -> NDArray[np.float32]:
        """candidates (B, n, F_c), context (B, F_ctx), mask (B, n) → masked Q (B, n)."""
        batch, n, _ = candidates.shape
        h, advantage = self._embed(candidates, context)
        if self._value is None:
            q = advantage
        else:
            w = mask.astype(np.float32)
            count = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
            pooled = np.einsum("bn,bnh->bh", w, h.reshape(batch, n, -1)) / count
            v = np.concatenate([pooled, context], axis=-1)
            v = self._act(v @ self._value[0][0] + self._value[0][1])
            value = v @ self._value[1][0] + self._value[1][1]
            q = value + advantage - (advantage * w).sum(axis=1, keepdims=True) / count
        return np.where(mask, q, np.float32(MASKED_Q)).astype(np.float32)


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
        self._numpy = (
            NumpyCandidateScorer(q_network) if isinstance(q_network, CandidateQNetwork) else None
        )

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
