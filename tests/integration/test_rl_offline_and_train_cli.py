"""Offline DQN from a real replay store, and the `dispatchloop train` command end to end."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dispatchloop.cli import app
from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay import open_store
from dispatchloop.replay.base import IncomingEvent, TimeWindow
from dispatchloop.rl.artifacts import load_model
from dispatchloop.rl.dqn import train_offline
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, RandomPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.rollout import run_episodes, test_seeds
from dispatchloop.sim.scenario import Scenario

pytestmark = pytest.mark.integration


def _fill_store(url: str, n_events: int, epsilon: float = 0.3) -> None:
    """Events logged by an epsilon-greedy dispatcher, written through the real store."""
    store = open_store(url)
    try:
        batch = []
        for doc in simulated_events(
            Scenario.default(),
            RewardSettings(),
            LoggingPolicy(GreedyPolicy(), "greedy"),
            n_events,
            seed=7,
            epsilon=epsilon,
        ):
            raw = json.dumps(doc).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        assert store.write_batch(batch).inserted == n_events
    finally:
        store.close()


@pytest.mark.slow
def test_offline_dqn_on_logged_epsilon_greedy_data_beats_random(sqlite_url: str) -> None:
    _fill_store(sqlite_url, n_events=19 * 120)
    store = open_store(sqlite_url, create=False)
    try:
        data = LoggedDataset.from_store(
            store, TimeWindow(), RewardSettings(), Scenario.default().arrays.demand
        )
    finally:
        store.close()
    assert len(data) == 19 * 120 and data.gaps == 0
    assert int(data.dones.sum()) == 120
    assert np.isfinite(data.propensities).all()
    config = DQNConfig(hidden_size=64, batch_size=64, cql_alpha=1.0, target_update_interval=200)
    result = train_offline(config, data, gradient_steps=1_500, seed=0)
    seeds = test_seeds(60)
    scenario, reward = Scenario.default(), RewardSettings()
    dqn = run_episodes(DQNPolicy(result.q_network), scenario, reward, seeds)
    rand = run_episodes(RandomPolicy(0), scenario, reward, seeds)
    diff = dqn.returns - rand.returns  # paired by seed
    assert diff.mean() > 0, (dqn.summary(), rand.summary())
    # Clearly better, not by luck: the paired mean exceeds 3 standard errors.
    assert diff.mean() > 3 * diff.std(ddof=1) / np.sqrt(len(diff))


def _params(tmp_path: Path, **values: float) -> Path:
    base = {"hidden_size": 32, "batch_size": 32, "learning_starts": 100, "buffer_size": 5_000}
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"best_params": {**base, **values}}))
    return path


def test_train_cli_gym_writes_a_verified_model(tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        ["train", "--env", "CartPole-v1", "--steps", "600", "--out", str(out), "--json",
         "--params", str(_params(tmp_path))],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "gym" and summary["env_steps"] == 600
    loaded = load_model(out)
    assert loaded.card.training["env_id"] == "CartPole-v1"
    assert loaded.config.hidden_size == 32
    assert loaded.onnx_path is not None and loaded.onnx_path.is_file()


def test_train_cli_diverging_run_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "model"
    params = _params(tmp_path, learning_rate=1e4, train_frequency=1)
    result = CliRunner().invoke(
        app,
        ["train", "--env", "CartPole-v1", "--steps", "3000", "--params", str(params),
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "training failed, no model written" in result.stderr
    assert "diverged" in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".model*"))


def test_train_cli_bad_input_exits_2_with_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rat": 0.1}))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--params", str(bad), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "learning_rat" in result.stderr
    result = runner.invoke(app, ["train", "--env", "NoSuchEnv-v9", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "NoSuchEnv-v9" in result.stderr
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["train", "--env", "CartPole-v1", "--out", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "already exists" in result.stderr


def test_train_cli_from_store_then_simulator(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_store(store_url, n_events=19 * 10)
    monkeypatch.setenv("DISPATCHLOOP_STORE_URL", store_url)
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        ["train", "--from-store", "--steps", "60", "--sim-steps", "400", "--scenario", "store",
         "--params", str(_params(tmp_path)), "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "offline+sim"
    assert summary["env_steps"] == 400 and summary["gradient_steps"] > 60
    card = load_model(out).card
    assert card.training["offline_gradient_steps"] == 60
    assert card.scenario is not None and card.scenario["n_drivers"] >= 1
    assert card.data_window is not None and (card.data_window.events or 0) > 0


def test_train_cli_from_an_empty_store_exits_2(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(sqlite_url).close()
    monkeypatch.setenv("DISPATCHLOOP_STORE_URL", sqlite_url)
    result = CliRunner().invoke(
        app, ["train", "--from-store", "--out", str(tmp_path / "m"), "--steps", "10"]
    )
    assert result.exit_code == 2
    assert "no logged transitions" in result.stderr


def test_train_cli_distill_writes_a_verified_model_taught_by_the_planner(tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = CliRunner().invoke(
        app,
        ["train", "--distill", "--distill-episodes", "3", "--params", str(_params(tmp_path)),
         "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    bookings = Scenario.default().bookings_per_episode
    assert summary["mode"] == "distill" and summary["env_steps"] == 2 * 3 * bookings
    loaded = load_model(out)
    assert loaded.card.training["teacher"] == "rollout" and loaded.card.trainer == "distill"
    assert loaded.card.training["distill"]["episodes_per_round"] == 3
    assert loaded.onnx_path is not None and loaded.onnx_path.is_file()
    seeds, world, reward = test_seeds(20), Scenario.default(), RewardSettings()
    returns = run_episodes(DQNPolicy(loaded.q_network), world, reward, seeds).returns
    random = run_episodes(RandomPolicy(0), world, reward, seeds).returns
    assert returns.mean() > random.mean()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--distill", "--from-store"], "takes none of"),
        (["--distill", "--sim-steps", "100"], "takes none of"),
        (["--distill-episodes", "5"], "needs --distill"),
    ],
)
def test_train_cli_distill_refuses_other_budgets(
    tmp_path: Path, options: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["train", *options, "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count(".") <= 2
    assert not (tmp_path / "m").exists()


def test_train_cli_is_the_loops_train_stage(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --from-store --scenario store` and the daemon's stage give the same weights."""
    from dispatchloop.pipeline.fit import fit_scenario
    from dispatchloop.pipeline.train import TrainSpec, train_candidate

    _fill_store(sqlite_url, n_events=19 * 10)
    monkeypatch.setenv("DISPATCHLOOP_STORE_URL", sqlite_url)
    params = _params(tmp_path)
    by_cli = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        ["train", "--from-store", "--steps", "40", "--sim-steps", "300", "--scenario", "store",
         "--seed", "3", "--params", str(params), "--out", str(by_cli), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    store = open_store(sqlite_url, create=False)
    try:
        spec = TrainSpec(
            out=tmp_path / "stage",
            trainer="dqn",
            fit=fit_scenario(store, TimeWindow()),
            reward=RewardSettings(),
            config=DQNConfig.from_json_file(params),
            offline_steps=40,
            sim_steps=300,
            seed=3,
        )
        by_stage = train_candidate(spec, store, threading.Event())
    finally:
        store.close()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sha256"] == by_stage.sha256
    assert load_model(by_cli).card.training == load_model(by_stage.model_dir).card.training


def test_train_cli_store_scenario_on_an_empty_store_exits_2(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store(sqlite_url).close()
    monkeypatch.setenv("DISPATCHLOOP_STORE_URL", sqlite_url)
    result = CliRunner().invoke(
        app, ["train", "--scenario", "store", "--out", str(tmp_path / "m"), "--sim-steps", "10"]
    )
    assert result.exit_code == 2
    assert "cannot calibrate the scenario from the store" in result.stderr
    assert not (tmp_path / "m").exists()
