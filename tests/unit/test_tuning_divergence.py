"""The objective's handling of a diverging trial (training is replaced: pure control logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from dispatchloop.rl.dqn import TrainingDivergedError
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning import objective as objective_module
from dispatchloop.tuning.objective import (
    DIVERGED_ATTR,
    DispatchObjective,
    ObjectiveSpec,
    _Reporter,
)
from dispatchloop.tuning.runner import run_trials
from dispatchloop.tuning.study import make_pruner, make_storage, open_study


def test_a_diverging_trial_is_pruned_with_its_reason_and_never_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = ObjectiveSpec(Scenario.default(), RewardSettings(), 100, 2, n_evaluations=2)
    calls = {"n": 0}

    def train(*_args: Any, **_kwargs: Any) -> Any:
        calls["n"] += 1
        raise TrainingDivergedError("loss is nan at gradient step 7")

    monkeypatch.setattr(objective_module, "train_dispatch", train)
    storage = make_storage(f"sqlite:///{tmp_path / 't.db'}", heartbeat_interval=5)
    study = open_study(
        storage, "d", seed=0, pruner=make_pruner("median", 2), fingerprint=spec.fingerprint()
    )
    run_trials(study, DispatchObjective(spec), n_trials=2, timeout_s=None)

    trials = study.get_trials()
    assert calls["n"] == 2
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert "loss is nan" in trials[0].user_attrs[DIVERGED_ATTR]
    with pytest.raises(ValueError):  # Optuna: no completed trial, so no best
        _ = study.best_trial
    assert isinstance(optuna.load_study(study_name="d", storage=storage), optuna.Study)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_reports_go_to_optuna_and_only_unfinished_training_is_pruned() -> None:
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    reporter = _Reporter(trial, total_steps=200)
    assert reporter.on_result(200, -90.0) is True  # the final score: reported, never pruned
    assert not reporter.pruned
    assert reporter.on_result(104, -95.0) is False  # mid-training: the pruner decides
    assert reporter.pruned
    assert reporter.on_result(150, float("nan")) is False  # a NaN score stops training
    assert trial.study.trials[0].intermediate_values == {1: -90.0, 2: -95.0}
