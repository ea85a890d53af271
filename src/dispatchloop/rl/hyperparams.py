"""DQN hyperparameters: one typed, documented dataclass; the tuner searches its fields.

Environment and scenario parameters (fleet size, bookings, geography) are not
here on purpose: they come from the data, and a tuner allowed to shrink the
problem would raise the reward by cheating.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def refuse_unknown_fields(cls: type, values: Mapping[str, Any], what: str) -> None:
    """Raise ValueError naming the first key of `values` that is no field of dataclass `cls`."""
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}")


@dataclass(frozen=True)
class DQNConfig:
    learning_rate: float = 3e-4
    """Adam step size."""
    gamma: float = 0.99
    """Discount factor per decision."""
    batch_size: int = 64
    """Transitions per gradient step."""
    buffer_size: int = 50_000
    """Capacity of the replay buffer in transitions (oldest overwritten)."""
    learning_starts: int = 1_000
    """Environment steps collected before the first gradient step."""
    train_frequency: int = 4
    """Environment steps between gradient steps."""
    gradient_steps: int = 1
    """Gradient steps each time training happens."""
    target_update_interval: int = 500
    """Gradient steps between target-network updates (hard copy when tau == 1)."""
    tau: float = 1.0
    """Polyak coefficient of the target update: 1.0 is a hard copy, 0.005 a soft one."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start of training."""
    exploration_final_eps: float = 0.05
    """Epsilon after the schedule ends."""
    exploration_fraction: float = 0.2
    """Share of the total steps over which epsilon falls linearly."""
    hidden_size: int = 128
    """Width of every hidden layer."""
    n_layers: int = 2
    """Number of hidden layers of the candidate scorer (and of the flat network)."""
    n_step: int = 3
    """Steps of the n-step return."""
    max_grad_norm: float = 10.0
    """Gradient clipping by global norm."""
    dueling: bool = True
    """Dueling head: state value plus mean-centred advantages."""
    double_q: bool = True
    """Double DQN: the online network picks the target action, the target network scores it."""
    cql_alpha: float = 1.0
    """Weight of the conservative (CQL) penalty in offline training; 0 disables it."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden-layer non-linearity."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DQNConfig:
        """Build from a dict, refusing unknown keys so a typo is not silently ignored."""
        refuse_unknown_fields(cls, values, "DQN hyperparameter")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: Path) -> DQNConfig:
        """Read plain params or an optimal_config.json (its `best_params`)."""
        data = json.loads(path.read_text())
        return cls.from_dict(data.get("best_params", data) if isinstance(data, dict) else data)
