"""`dispatchloop evaluate` end to end, as a subprocess: real simulator, real model directories."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.dqn import train_dispatch, train_gym
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = DQNConfig(hidden_size=16, n_layers=1, batch_size=32, buffer_size=2_000, learning_starts=64)


@pytest.fixture(scope="module")
def dispatch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, briefly trained dispatch model: enough to load and play, not to win."""
    result = train_dispatch(TINY, Scenario.default(), RewardSettings(), total_steps=256, seed=0)
    directory = tmp_path_factory.mktemp("models") / "tiny-dqn"
    save_model(directory, result.q_network, TINY, CardDraft(model_version="tiny"))
    return directory


def _run(
    tmp_path: Path, *args: str, store_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")},
        "DISPATCHLOOP_DATA_DIR": str(tmp_path / "data"),
        "DISPATCHLOOP_LOG_FORMAT": "json",
    }
    if store_url is not None:
        env["DISPATCHLOOP_STORE_URL"] = store_url
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", "evaluate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_baselines_and_a_model_on_the_same_seeds(tmp_path: Path, dispatch_model: Path) -> None:
    model = str(dispatch_model)
    data = _json(
        _run(
            tmp_path,
            "--policies",
            f"random,greedy,hindsight,{model}",
            "--episodes",
            "12",
            "--seed",
            "3",
            "--json",
        )
    )
    assert data["environment"] == "dispatch:default"
    assert data["episodes"] == 12
    assert data["seeds"] == {"first": 20_000_003, "last": 20_000_014}
    assert set(data["policies"]) == {"random", "greedy", "hindsight", model}
    assert set(data["paired"]) == {"random", "hindsight", model}
    for summary in data["policies"].values():
        low, high = summary["ci99"]
        assert low <= summary["mean"] <= high
        assert summary["std"] >= 0
        assert {"late_rate", "cancel_rate"} <= set(summary["guardrails"])
    policies, paired = data["policies"], data["paired"]
    assert policies["greedy"]["mean"] > policies["random"]["mean"]
    assert paired["random"]["vs"] == "greedy"
    assert paired["random"]["ci99"][1] < 0  # random loses, and the pairing makes it certain
    assert policies["hindsight"]["mean"] >= policies["greedy"]["mean"]
    assert paired["hindsight"]["mean_diff"] == pytest.approx(
        policies["hindsight"]["mean"] - policies["greedy"]["mean"]
    )
    gap = paired[model]["gap_share"]
    assert (gap["low"], gap["high"]) == ("greedy", "hindsight")
    expected = (policies[model]["mean"] - policies["greedy"]["mean"]) / (
        policies["hindsight"]["mean"] - policies["greedy"]["mean"]
    )
    assert gap["share"] == pytest.approx(expected)
    assert "gap_share" not in paired["random"]


def test_table_output_is_readable(tmp_path: Path) -> None:
    result = _run(tmp_path, "--policies", "random,greedy,rollout", "--episodes", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "dispatch:default: 4 paired episodes (seeds 20000000..20000003)"
    assert lines[1].split()[:3] == ["policy", "mean", "return"]
    assert any(line.startswith("random") for line in lines)
    assert any(line.startswith("rollout") for line in lines)  # the planner reference runs too


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "greedy,no-such-model"], "neither a baseline"),
        (["--policies", "greedy,random", "--baseline", "hindsight"], "baseline 'hindsight'"),
        (["--episodes", "1"], "at least 2"),
        (["--scenario", "mars"], "--scenario must be one of"),
        (["--scenario", "store"], "no events"),
        (["--env", "NoSuchEnv-v9"], "unknown Gymnasium environment"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    extra = [] if "--episodes" in args else ["--episodes", "3"]
    result = _run(tmp_path, *args, *extra)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(errors) == 1
    assert message in errors[0]
    assert errors[0].endswith(".")
    assert "Traceback" not in result.stderr


def test_dispatch_model_cannot_play_a_gym_env(tmp_path: Path, dispatch_model: Path) -> None:
    result = _run(
        tmp_path,
        "--env",
        "CartPole-v1",
        "--policies",
        f"random,{dispatch_model}",
        "--episodes",
        "2",
    )
    assert result.returncode == 2
    assert "cannot play CartPole-v1" in result.stderr


def test_gym_path_pairs_a_model_with_random(tmp_path: Path) -> None:
    config = DQNConfig(hidden_size=16, n_layers=1, batch_size=32, learning_starts=64)
    trained = train_gym(config, "CartPole-v1", total_steps=256, seed=0)
    model = tmp_path / "cartpole"
    save_model(model, trained.q_network, config, CardDraft(model_version="cartpole-tiny"))
    data = _json(
        _run(
            tmp_path,
            "--env",
            "CartPole-v1",
            "--policies",
            str(model),  # one model alone: random is added as the baseline
            "--episodes",
            "5",
            "--json",
        )
    )
    assert data["environment"] == "CartPole-v1"
    assert data["baseline"] == "random"
    assert 5 <= data["policies"]["random"]["mean"] <= 100  # CartPole-v1 random: ~22
    assert data["policies"][str(model)]["mean"] >= 1
    assert data["paired"][str(model)]["vs"] == "random"
    assert "guardrails" not in data["policies"]["random"]


def _fill_store(url: str, scenario: Scenario, n_events: int) -> None:
    """Logged decisions of a greedy dispatcher in `scenario`, stored like ingest would."""
    store = open_store(url)
    try:
        logger = LoggingPolicy(GreedyPolicy(), "greedy")
        batch = []
        for event in simulated_events(scenario, RewardSettings(), logger, n_events, seed=5):
            raw = json.dumps(event).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        assert store.write_batch(batch).inserted == n_events
    finally:
        store.close()


def test_store_scenario_is_calibrated_from_the_replay_store(tmp_path: Path, store_url: str) -> None:
    world = dataclasses.replace(Scenario.default(), n_drivers=13, bookings_per_episode=25)
    _fill_store(store_url, world, 25 * 8)
    args = ("--policies", "greedy,hindsight", "--episodes", "4", "--json")
    fitted = _json(_run(tmp_path, *args, "--scenario", "store", store_url=store_url))
    default = _json(_run(tmp_path, *args, store_url=store_url))
    assert fitted["environment"] == "dispatch:store"
    assert default["environment"] == "dispatch:default"
    # Same seeds, another world: 25 bookings per episode cost more than the default's 19.
    assert fitted["policies"]["greedy"]["mean"] < default["policies"]["greedy"]["mean"]
    assert fitted["policies"]["hindsight"]["mean"] >= fitted["policies"]["greedy"]["mean"]
