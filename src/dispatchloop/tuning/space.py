"""The search space: which `DQNConfig` fields the tuner may change, and over which ranges.

Declared as data (one `Param` per field) rather than as a chain of
`trial.suggest_*` calls so that the space can be checked (a test asserts every
name is a DQNConfig field and none is a scenario parameter), documented,
and used to validate warm-start parameters before they are enqueued.

Environment parameters (fleet size, bookings per episode, geography) are
deliberately absent: they come from the data. The original tuner searched them
too and could raise its reward by shrinking the problem.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optuna

from dispatchloop.rl.hyperparams import DQNConfig

logger = logging.getLogger(__name__)

ParamKind = Literal["float", "int", "categorical"]


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a DQNConfig field name and its distribution."""

    name: str
    kind: ParamKind
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask the trial for a value of this parameter."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether `value` is a legal value of this parameter (for warm starts)."""
        if self.kind == "categorical":
            return any(type(value) is type(choice) and value == choice for choice in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        return math.isfinite(value) and self.low <= value <= self.high


DEFAULT_CONFIG = DQNConfig()
"""The documented defaults; fields a study does not search keep these values."""

ONLINE_SPACE: tuple[Param, ...] = (
    Param("learning_rate", "float", 1e-5, 3e-3, log=True),
    Param("gamma", "float", 0.90, 0.999),
    Param("batch_size", "categorical", choices=(32, 64, 128)),
    Param("buffer_size", "categorical", choices=(5_000, 20_000, 50_000, 100_000)),
    Param("learning_starts", "int", 64, 1_024, log=True),
    Param("train_frequency", "int", 2, 8),
    Param("gradient_steps", "int", 1, 2),
    Param("target_update_interval", "int", 50, 2_000, log=True),
    Param("tau", "float", 0.005, 1.0, log=True),
    Param("exploration_initial_eps", "float", 0.5, 1.0),
    Param("exploration_final_eps", "float", 0.01, 0.2, log=True),
    Param("exploration_fraction", "float", 0.05, 0.5),
    Param("hidden_size", "categorical", choices=(32, 64, 128)),
    Param("n_layers", "int", 1, 3),
    Param("n_step", "int", 1, 5),
    Param("max_grad_norm", "float", 0.5, 20.0, log=True),
    Param("dueling", "categorical", choices=(True, False)),
    Param("double_q", "categorical", choices=(True, False)),
    Param("activation", "categorical", choices=("relu", "tanh")),
)
"""Fields searched when trials train online in the simulator (the default objective).

Ranges are sized for a per-trial budget of a few thousand env steps on a small
CPU: gradient steps per env step (gradient_steps / train_frequency) stay at or
below 1, learning_starts well inside the budget, and width/batch at most 128,
so the slowest trial costs a few times the median one, not twenty times."""

OFFLINE_ONLY: tuple[Param, ...] = (Param("cql_alpha", "float", 0.0, 5.0),)
"""Fields that only matter when training from logged data: `cql_alpha` has no effect
on online training, and searching an inert parameter only adds noise to TPE."""


def search_space(offline: bool = False) -> tuple[Param, ...]:
    """The parameters a study searches; offline studies add the CQL weight."""
    return ONLINE_SPACE + OFFLINE_ONLY if offline else ONLINE_SPACE


def suggest_config(
    trial: optuna.Trial, base: DQNConfig, space: Sequence[Param] = ONLINE_SPACE
) -> DQNConfig:
    """A DQNConfig whose searched fields come from the trial and the rest from `base`."""
    values = {param.name: param.suggest(trial) for param in space}
    return dataclasses.replace(base, **values)


def config_from_params(params: Mapping[str, Any], base: DQNConfig = DEFAULT_CONFIG) -> DQNConfig:
    """Rebuild the full configuration of a trial from its (searched) params."""
    return DQNConfig.from_dict({**base.to_dict(), **params})


def warm_start_params(params: Mapping[str, Any], space: Sequence[Param]) -> dict[str, Any]:
    """The subset of `params` that is legal in `space`; the rest is dropped with a warning.

    A previous optimal_config.json may come from an older space (a field removed,
    a range narrowed); enqueuing an illegal value would make Optuna fail the trial.
    """
    by_name = {param.name: param for param in space}
    kept: dict[str, Any] = {}
    for name, value in params.items():
        param = by_name.get(name)
        if param is None:
            logger.warning("warm start: %s is not searched; ignored", name)
        elif not param.contains(value):
            logger.warning("warm start: %s=%r is outside the search space; ignored", name, value)
        else:
            kept[name] = int(value) if param.kind == "int" else value
    return kept
