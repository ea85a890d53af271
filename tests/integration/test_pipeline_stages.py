"""pipeline stages on a real store: fit, train in a spawned child, stop mid-training."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from loop_support import N_EVENTS, fill_store

from dispatchloop.pipeline.child import ChildLimits
from dispatchloop.pipeline.common import StageProgress, StageStoppedError
from dispatchloop.pipeline.fit import NotEnoughDataError, fit_scenario
from dispatchloop.pipeline.train import TrainSpec, train_in_child
from dispatchloop.replay import open_store
from dispatchloop.replay.base import TimeWindow
from dispatchloop.rl.artifacts import load_model
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario

pytestmark = pytest.mark.integration


@pytest.fixture
def filled(sqlite_url: str) -> str:
    fill_store(sqlite_url)
    return sqlite_url


def test_fit_refuses_too_little_data_and_is_deterministic(filled: str):
    store = open_store(filled)
    try:
        with pytest.raises(NotEnoughDataError, match=f"{N_EVENTS} stored events, fewer than"):
            fit_scenario(store, TimeWindow(), min_events=N_EVENTS + 1)
        first = fit_scenario(store, TimeWindow(), min_events=N_EVENTS)
        again = fit_scenario(store, TimeWindow(), min_events=N_EVENTS)
    finally:
        store.close()
    assert first.events == N_EVENTS
    assert first.fingerprint == again.fingerprint
    assert first.scenario.n_drivers == Scenario.default().n_drivers


def _spec(url: str, out: Path, sim_steps: int) -> TrainSpec:
    store = open_store(url)
    try:
        fit = fit_scenario(store, TimeWindow())
    finally:
        store.close()
    return TrainSpec(
        out=out,
        trainer="dqn",
        fit=fit,
        reward=RewardSettings(),
        config=DQNConfig(),
        offline_steps=100,
        sim_steps=sim_steps,
    )


@pytest.mark.slow
def test_train_in_child_writes_a_verified_model(filled: str, tmp_path: Path):
    out = tmp_path / "models" / "candidate"
    seen: list[StageProgress] = []
    model = train_in_child(
        _spec(filled, out, sim_steps=400),
        filled,
        threading.Event(),
        ChildLimits(timeout_s=240, grace_s=5),
        progress=seen.append,
    )
    assert model.model_dir == out and model.gradient_steps >= 100
    loaded = load_model(out)
    card = loaded.card
    assert card.scenario_fingerprint and card.trainer == "dqn"
    assert card.training["mode"] == "offline+sim" and model.mode == "offline+sim"
    assert card.training["offline_gradient_steps"] > 0
    assert card.data_window is not None and card.data_window.events is not None
    assert card.data_window.events > 0
    assert {report.stage for report in seen} <= {"train.offline", "train.sim"}


@pytest.mark.slow
def test_a_child_stopped_mid_training_leaves_no_model_directory(filled: str, tmp_path: Path):
    out = tmp_path / "models" / "candidate"
    stop = threading.Event()

    def on_progress(report: StageProgress) -> None:
        if report.stage == "train.sim" and report.done > 0:
            stop.set()  # training is under way in the simulator: stop it now

    started = time.monotonic()
    with pytest.raises(StageStoppedError):
        train_in_child(
            _spec(filled, out, sim_steps=5_000_000),
            filled,
            stop,
            ChildLimits(timeout_s=240, grace_s=5),
            progress=on_progress,
        )
    assert stop.is_set(), "the child never reported simulator training"
    assert time.monotonic() - started < 120
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else True
