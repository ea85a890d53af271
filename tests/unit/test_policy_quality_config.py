"""benchmarks/policy_quality.py: shared DQN overrides plus per-world sections."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from dispatchloop.rl.distill import DistillConfig
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "policy_quality.py"


@pytest.fixture(scope="module")
def policy_quality() -> ModuleType:
    spec = importlib.util.spec_from_file_location("policy_quality_under_test", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/NamedTuple look the module up by name
    spec.loader.exec_module(module)
    return module


def test_shared_overrides_then_the_worlds_own(policy_quality: ModuleType) -> None:
    data = {
        "gamma": 0.7,
        "learning_rate": 1e-3,
        "worlds": {"store": {"gamma": 0.5, "train_steps": 60_000}},
    }
    default = policy_quality.world_setup(data, "default")
    store = policy_quality.world_setup(data, "store")
    assert default.config == DQNConfig(gamma=0.7, learning_rate=1e-3)
    assert default.train_steps is None
    assert store.config == DQNConfig(gamma=0.5, learning_rate=1e-3)
    assert store.train_steps == 60_000
    assert data["worlds"] == {"store": {"gamma": 0.5, "train_steps": 60_000}}  # not mutated


def test_plain_overrides_without_worlds(policy_quality: ModuleType) -> None:
    setup = policy_quality.world_setup({"n_step": 1}, "store")
    assert setup == (DQNConfig(n_step=1), None, 1, DistillConfig())


def test_distill_budget_is_read_and_shared_by_both_worlds(policy_quality: ModuleType) -> None:
    data = {"distill": {"rounds": 3, "futures": 8}, "worlds": {"store": {"train_seeds": 2}}}
    for world in policy_quality.WORLDS:
        assert policy_quality.world_setup(data, world).distill == DistillConfig(rounds=3, futures=8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"worlds": {"fitted": {}}}, "unknown world 'fitted'"),
        ({"worlds": {"store": {"gama": 0.5}}}, "unknown DQN hyperparameter 'gama'"),
        ({"worlds": {"store": {"train_steps": 0}}}, "positive integer"),
        ({"worlds": {"store": {"train_steps": 1.5}}}, "positive integer"),
        ({"worlds": []}, "must be an object"),
        ({"distill": {"round": 3}}, "unknown distill setting 'round'"),
        ({"distill": {"rounds": 0}}, "rounds must be positive"),
        ({"distill": 3}, "must be an object"),
    ],
)
def test_refuses_what_it_would_silently_ignore(
    policy_quality: ModuleType, data: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        policy_quality.world_setup(data, "store")


def test_the_committed_config_parses_for_both_worlds(policy_quality: ModuleType) -> None:
    data = json.loads(policy_quality.DQN_CONFIG.read_text())
    for world in policy_quality.WORLDS:
        policy_quality.world_setup(data, world)


def test_train_seeds_is_read_per_world(policy_quality: ModuleType) -> None:
    data = {"worlds": {"store": {"train_seeds": 3}}}
    assert policy_quality.world_setup(data, "store").train_seeds == 3
    assert policy_quality.world_setup(data, "default").train_seeds == 1


def test_train_selected_keeps_the_best_on_validation(
    policy_quality: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = iter([-10.0, -5.0, -7.0])
    monkeypatch.setattr(policy_quality, "SELECT_EPISODES", 2)
    monkeypatch.setattr(
        policy_quality,
        "run_episodes",
        lambda *args: SimpleNamespace(returns=[next(scores)]),
    )
    trained: list[int] = []

    def fake_train(*args: object, seed: int, num_envs: int) -> SimpleNamespace:
        trained.append(seed)
        return SimpleNamespace(q_network=torch.nn.Linear(1, 1), seed=seed)

    monkeypatch.setattr(policy_quality, "train_dispatch", fake_train)
    monkeypatch.setattr(policy_quality, "DQNPolicy", lambda network: network)
    setup = policy_quality.WorldSetup(DQNConfig(), 10, 3)
    args = SimpleNamespace(seed=4, num_envs=2)
    best, selection = policy_quality.train_selected(
        setup, Scenario.default(), RewardSettings(), 10, args
    )
    assert trained == [4, 5, 6]
    assert best.seed == 5
    assert selection == [(4, -10.0), (5, -5.0), (6, -7.0)]
