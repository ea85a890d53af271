"""pipeline.tune in a spawned child: a small study on the fitted scenario, then a warm start."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from loop_support import fill_store

from dispatchloop.pipeline.child import ChildLimits, run_in_child
from dispatchloop.pipeline.fit import fit_scenario
from dispatchloop.pipeline.tune import TunedParams, TuneSpec, tune_params
from dispatchloop.replay import open_store
from dispatchloop.replay.base import TimeWindow
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tune(spec: TuneSpec, stop, _progress) -> TunedParams:
    return tune_params(spec, stop)


def test_tune_writes_a_usable_config_and_the_next_study_warm_starts(
    sqlite_url: str, tmp_path: Path
):
    fill_store(sqlite_url)
    store = open_store(sqlite_url)
    try:
        fit = fit_scenario(store, TimeWindow())
    finally:
        store.close()
    output = tmp_path / "optimal_config.json"
    spec = TuneSpec(
        storage_url=f"sqlite:///{tmp_path / 'study.db'}",
        study_name=f"loop-{fit.fingerprint}",
        fit=fit,
        reward=RewardSettings(),
        n_trials=2,
        steps_per_trial=300,
        validation_episodes=2,
        output=output,
    )
    limits = ChildLimits(timeout_s=240, grace_s=5)
    first = run_in_child(_tune, spec, limits=limits, stop=threading.Event(), name="tune")
    assert first.complete + first.pruned == 2 and first.best_params is not None
    assert isinstance(DQNConfig.from_json_file(output), DQNConfig)
    again = TuneSpec(
        **{**spec.__dict__, "study_name": "loop-next", "warm_start": first.best_params}
    )
    second = run_in_child(_tune, again, limits=limits, stop=threading.Event(), name="tune")
    assert second.warm_started
