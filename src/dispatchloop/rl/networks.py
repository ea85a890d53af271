"""Q-networks: a per-candidate scorer for dispatch and a plain MLP for generic Gym envs.

`CandidateQNetwork` scores every candidate row with the same weights, so the
number of candidates is free: a model trained with 9 drivers serves 40. Masked
(ineligible or padded) positions get `MASKED_Q`, a large finite negative number
rather than -inf, so sums, means and ONNX arithmetic never produce NaN.

Every network can describe itself with `spec()` (plain JSON data stored in the
model's card.json) and be rebuilt with `build_network(spec)`: weights live
in safetensors, never in a pickle.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dispatchloop.decisions.featurizer import N_CANDIDATE_FEATURES, N_CONTEXT_FEATURES
from dispatchloop.rl.hyperparams import DQNConfig

MASKED_Q = -1.0e9
"""Q-value of an action that may not be taken; finite so that no arithmetic turns into NaN."""

Observation = Mapping[str, torch.Tensor]


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r} (expected 'relu' or 'tanh')")


def mlp(in_features: int, hidden_size: int, n_layers: int, activation: str) -> nn.Sequential:
    """`n_layers` hidden layers of `hidden_size`, each followed by the activation."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden_size), _activation(activation)]
        width = hidden_size
    return nn.Sequential(*layers)


class QNetwork(nn.Module, abc.ABC):
    """A Q-function over a (possibly masked) discrete action set.

    Contract: `q_values(obs, mask)` returns (batch, n_actions) float32 with every
    position where `mask` is False set to MASKED_Q; `spec()` returns JSON data
    from which `build_network` rebuilds an identical, untrained module.
    """

    kind: str

    @abc.abstractmethod
    def q_values(self, obs: Observation, mask: torch.Tensor) -> torch.Tensor:
        """Masked Q-values, (batch, n_actions)."""

    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """Architecture as JSON data (kind and shape), stored in the model card."""


class CandidateQNetwork(QNetwork):
    """Shared-weight candidate scorer with an optional dueling head.

    Each row [candidate_features, context] goes through the same MLP to an
    embedding h_i; the advantage head turns h_i into a_i. With `dueling`, a state
    value V comes from the mean of eligible embeddings plus the context, and
    Q_i = V + a_i - mean_eligible(a). Nothing depends on the number of rows.
    """

    kind = "candidate"

    def __init__(
        self,
        hidden_size: int,
        n_layers: int,
        *,
        activation: str = "relu",
        dueling: bool = True,
        n_candidate_features: int = N_CANDIDATE_FEATURES,
        n_context_features: int = N_CONTEXT_FEATURES,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.n_layers = max(n_layers, 1)
        self.activation = activation
        self.dueling = dueling
        self.n_candidate_features = n_candidate_features
        self.n_context_features = n_context_features
        in_features = n_candidate_features + n_context_features
        self.encoder = mlp(in_features, hidden_size, self.n_layers, activation)
        self.advantage = nn.Linear(hidden_size, 1)
        self.value: nn.Sequential | None = None
        if dueling:
            self.value = nn.Sequential(
                nn.Linear(hidden_size + n_context_features, hidden_size),
                _activation(activation),
                nn.Linear(hidden_size, 1),
            )

    @classmethod
    def from_config(cls, config: DQNConfig) -> CandidateQNetwork:
        return cls(
            config.hidden_size,
            config.n_layers,
            activation=config.activation,
            dueling=config.dueling,
        )

    def forward(
        self, candidates: torch.Tensor, context: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """candidates (B, n, F_c), context (B, F_ctx), mask (B, n) bool → Q (B, n)."""
        n = candidates.shape[1]
        rows = torch.cat([candidates, context.unsqueeze(1).expand(-1, n, -1)], dim=-1)
        embedding = self.encoder(rows)  # (B, n, H)
        advantage = self.advantage(embedding).squeeze(-1)  # (B, n)
        weights = mask.to(embedding.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
        if self.value is not None:
            pooled = (embedding * weights.unsqueeze(-1)).sum(dim=1) / count  # (B, H)
            value = self.value(torch.cat([pooled, context], dim=-1))  # (B, 1)
            mean_advantage = (advantage * weights).sum(dim=1, keepdim=True) / count
            q = value + advantage - mean_advantage
        else:
            q = advantage
        return torch.where(mask, q, torch.full_like(q, MASKED_Q))

    def q_values(self, obs: Observation, mask: torch.Tensor) -> torch.Tensor:
        return self(obs["candidates"], obs["context"], mask)  # type: ignore[no-any-return]

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "activation": self.activation,
            "dueling": self.dueling,
            "n_candidate_features": self.n_candidate_features,
            "n_context_features": self.n_context_features,
        }


class FlatQNetwork(QNetwork):
    """MLP from a flat Box observation to one Q-value per discrete action (CartPole etc.)."""

    kind = "flat"

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_size: int,
        n_layers: int,
        *,
        activation: str = "relu",
        dueling: bool = True,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.hidden_size = hidden_size
        self.n_layers = max(n_layers, 1)
        self.activation = activation
        self.dueling = dueling
        self.body = mlp(obs_dim, hidden_size, self.n_layers, activation)
        self.advantage = nn.Linear(hidden_size, n_actions)
        self.value = nn.Linear(hidden_size, 1) if dueling else None

    @classmethod
    def from_config(cls, config: DQNConfig, obs_dim: int, n_actions: int) -> FlatQNetwork:
        return cls(
            obs_dim,
            n_actions,
            config.hidden_size,
            config.n_layers,
            activation=config.activation,
            dueling=config.dueling,
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (B, obs_dim) → Q (B, n_actions), unmasked."""
        hidden = self.body(obs)
        advantage = self.advantage(hidden)
        if self.value is None:
            return advantage  # type: ignore[no-any-return]
        return self.value(hidden) + advantage - advantage.mean(dim=1, keepdim=True)  # type: ignore[no-any-return]

    def q_values(self, obs: Observation, mask: torch.Tensor) -> torch.Tensor:
        q = self(obs["obs"])
        return torch.where(mask, q, torch.full_like(q, MASKED_Q))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "n_actions": self.n_actions,
            "hidden_size": self.hidden_size,
            "n_layers": self.n_layers,
            "activation": self.activation,
            "dueling": self.dueling,
        }


def build_network(spec: Mapping[str, Any]) -> QNetwork:
    """Rebuild an (untrained) network from `spec()` data; unknown kinds are refused."""
    values = dict(spec)
    kind = values.pop("kind", None)
    if kind == CandidateQNetwork.kind:
        return CandidateQNetwork(**values)
    if kind == FlatQNetwork.kind:
        return FlatQNetwork(**values)
    raise ValueError(f"unknown network kind {kind!r}")
