"""The real objective (DQN training in the simulator) through `tune` and `compare`, tiny budgets."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings, Settings
from dispatchloop.sim.rollout import test_seeds, validation_seeds
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.objective import DispatchObjective, ObjectiveSpec
from dispatchloop.tuning.request import build_request
from dispatchloop.tuning.space import ONLINE_SPACE
from dispatchloop.tuning.tune import TuneConfig, tune

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def tiny_spec() -> ObjectiveSpec:
    return ObjectiveSpec(
        scenario=Scenario.default(),
        reward=RewardSettings(),
        steps_per_trial=400,
        validation_episodes=3,
        n_evaluations=2,
    )


def test_objective_scores_on_validation_seeds_never_test_seeds() -> None:
    objective = DispatchObjective(tiny_spec())
    assert objective.seeds == list(validation_seeds(3))
    assert not set(objective.seeds) & set(test_seeds(10_000))


def test_tune_in_process_writes_a_report_optuna_can_follow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    output = tmp_path / "optimal_config.json"
    config = TuneConfig(
        storage_url=url, study_name="tiny", n_trials=3, output=output, show_progress=False
    )
    result = tune(config, tiny_spec())

    assert result.complete + result.pruned == 3
    assert result.complete >= 1  # median pruning needs 5 finished trials before it prunes
    report = json.loads(output.read_text())
    assert report["best_value"] == result.best_value
    assert len(report["optimization_history"]) == 3
    assert set(report["best_params"]) == {param.name for param in ONLINE_SPACE}
    assert DQNConfig.from_json_file(output) == result.best_config
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.best_value == result.best_value
    assert study.user_attrs["dispatchloop.objective"]["steps_per_trial"] == 400

    # Re-tuning (a new study) warm-starts from the previous report at --output.
    again, spec = build_request(
        Settings(data_dir=tmp_path),
        Scenario.default(),
        trials=1,
        storage=url,
        study="next",
        output=output,
        steps_per_trial=400,
        validation_episodes=3,
        evaluations=2,
    )
    assert again.warm_start == result.best_params
    assert tune(dataclasses.replace(again, show_progress=False), spec).warm_started
    first = optuna.load_study(study_name="next", storage=url).trials[0]
    assert first.params == result.best_params


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCHLOOP_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_compare_pairs_two_configs_on_test_seeds(tmp_path: Path) -> None:
    baseline, candidate = tmp_path / "baseline.json", tmp_path / "candidate.json"
    baseline.write_text(json.dumps(DQNConfig().to_dict()))
    tuned = dataclasses.replace(DQNConfig(), learning_rate=1e-3, learning_starts=100)
    candidate.write_text(json.dumps({"best_params": tuned.to_dict(), "best_value": -1.0}))
    done = run_cli(
        "compare",
        "--baseline",
        str(baseline),
        "--candidate",
        str(candidate),
        "--episodes",
        "4",
        "--steps",
        "300",
        "--json",
        data_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["baseline"] == "baseline"
    assert report["episodes"] == 4
    assert report["seeds"]["first"] == next(iter(test_seeds(1)))
    paired = report["paired"]["candidate"]
    low, high = paired["ci99"]
    assert low <= paired["mean_diff"] <= high
    assert report["sides"]["candidate"]["kind"] == "params"


def test_compare_refuses_a_missing_side_with_exit_2(tmp_path: Path) -> None:
    done = run_cli(
        "compare",
        "--baseline",
        str(tmp_path / "nope.json"),
        "--candidate",
        str(tmp_path / "nope.json"),
        data_dir=tmp_path,
    )
    assert done.returncode == 2
    assert "neither a params file nor a model directory" in done.stderr
    assert done.stderr.count("\n") == 1  # one sentence, no traceback


def test_tune_refuses_a_study_made_for_another_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    common = ["tune", "--storage", url, "--study", "s", "--trials", "1", "--evaluations", "2"]
    common += ["--validation-episodes", "2"]
    first = run_cli(*common, "--steps-per-trial", "200", data_dir=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*common, "--steps-per-trial", "300", data_dir=tmp_path)
    assert second.returncode == 2
    assert "steps_per_trial" in second.stderr
