"""The search space is DQN hyperparameters only, and warm starts are validated against it."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.space import (
    ONLINE_SPACE,
    Param,
    config_from_params,
    search_space,
    suggest_config,
    warm_start_params,
)

DQN_FIELDS = {field.name for field in dataclasses.fields(DQNConfig)}
SCENARIO_FIELDS = {field.name for field in dataclasses.fields(Scenario)}
ENVIRONMENT_WORDS = ("driver", "booking", "fleet", "episode", "arrival", "speed", "lat", "lon")


@pytest.mark.parametrize("offline", [False, True])
def test_space_is_dqn_fields_only_and_never_environment(offline: bool) -> None:
    names = [param.name for param in search_space(offline)]
    assert len(names) == len(set(names))
    assert len(names) >= 14
    assert set(names) <= DQN_FIELDS
    assert not set(names) & SCENARIO_FIELDS
    assert not [name for name in names if any(word in name for word in ENVIRONMENT_WORDS)]


def test_offline_space_adds_cql_alpha_only() -> None:
    online = {param.name for param in search_space(False)}
    offline = {param.name for param in search_space(True)}
    assert offline - online == {"cql_alpha"}
    assert "cql_alpha" not in online


def test_suggest_config_takes_searched_fields_from_the_trial() -> None:
    params = {
        param.name: (param.choices[-1] if param.kind == "categorical" else param.high)
        for param in ONLINE_SPACE
    }
    params["learning_rate"] = 1e-4
    base = dataclasses.replace(DQNConfig(), cql_alpha=0.25)
    config = suggest_config(optuna.trial.FixedTrial(params), base)
    assert config.learning_rate == 1e-4
    assert config.hidden_size == 128
    assert config.n_layers == 3
    assert config.activation == "tanh"
    assert config.cql_alpha == 0.25  # not searched: kept from base
    assert config_from_params(params, base) == config


@pytest.mark.parametrize(
    ("param", "value", "legal"),
    [
        (Param("x", "float", 0.1, 1.0), 0.5, True),
        (Param("x", "float", 0.1, 1.0), 1.5, False),
        (Param("x", "float", 0.1, 1.0), float("nan"), False),
        (Param("x", "float", 0.1, 1.0), "0.5", False),
        (Param("x", "int", 1, 5), 3, True),
        (Param("x", "int", 1, 5), 3.5, False),
        (Param("x", "int", 1, 5), True, False),
        (Param("x", "categorical", choices=(True, False)), True, True),
        (Param("x", "categorical", choices=(True, False)), 1, False),
        (Param("x", "categorical", choices=(32, 64)), 48, False),
    ],
)
def test_param_contains(param: Param, value: object, legal: bool) -> None:
    assert param.contains(value) is legal


def test_warm_start_keeps_legal_values_and_drops_the_rest() -> None:
    kept = warm_start_params(
        {
            "learning_rate": 1e-3,
            "gamma": 2.0,  # outside the range
            "n_drivers": 3,  # an environment parameter: never tuned
            "n_step": 3.0,  # JSON may carry ints as floats
            "dueling": False,
        },
        ONLINE_SPACE,
    )
    assert kept == {"learning_rate": 1e-3, "n_step": 3, "dueling": False}
    assert isinstance(kept["n_step"], int)
