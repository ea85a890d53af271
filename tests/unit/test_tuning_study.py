"""Study machinery driven by tiny objectives: budget, resume, seeding, NaN, warm start, report.

The storage is a real SQLite file (Optuna's RDB storage, as in production);
the objective is a cheap quadratic so the logic is tested in milliseconds.
The real objective and real worker processes are in tests/integration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.tuning.report import optimal_config, read_best_params, write_json_atomic
from dispatchloop.tuning.runner import (
    BUDGET_REASON_ATTR,
    NON_FINITE_ATTR,
    _guarded,
    run_trials,
    tally,
)
from dispatchloop.tuning.space import ONLINE_SPACE, Param
from dispatchloop.tuning.study import (
    StudyMismatchError,
    enqueue_warm_start,
    make_pruner,
    make_storage,
    open_study,
)

SPACE = (
    Param("learning_rate", "float", 1e-5, 1e-2, log=True),
    Param("gamma", "float", 0.9, 0.999),
    Param("hidden_size", "categorical", choices=(32, 64, 128)),
)
FINGERPRINT = {"seed": 7, "steps_per_trial": 100}


def quadratic(trial: optuna.Trial) -> float:
    """Peak at learning_rate=1e-3, gamma=0.99, hidden 64."""
    lr = trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    gamma = trial.suggest_float("gamma", 0.9, 0.999)
    hidden = trial.suggest_categorical("hidden_size", [32, 64, 128])
    return -((math.log10(lr) + 3) ** 2) - 100 * (gamma - 0.99) ** 2 - abs(hidden - 64) / 64


def study_at(
    tmp_path: Path, name: str = "s", fingerprint: dict[str, int] = FINGERPRINT
) -> optuna.Study:
    storage = make_storage(f"sqlite:///{tmp_path / 'tuning.db'}", heartbeat_interval=5)
    return open_study(
        storage, name, seed=7, pruner=make_pruner("median", 5), fingerprint=fingerprint
    )


def test_budget_is_for_the_study_and_a_rerun_resumes_numbering(tmp_path: Path) -> None:
    study = study_at(tmp_path)
    first = run_trials(study, quadratic, n_trials=4, timeout_s=None)
    assert first.complete == 4
    again = run_trials(study_at(tmp_path), quadratic, n_trials=4, timeout_s=None)
    assert again.complete == 4  # budget already spent: nothing more is run
    more = run_trials(study_at(tmp_path), quadratic, n_trials=7, timeout_s=None)
    assert more.complete == 7
    numbers = sorted(t.number for t in study_at(tmp_path).get_trials())
    assert numbers == list(range(7))


def test_trial_created_after_the_budget_is_claimed_fails_before_running(tmp_path: Path) -> None:
    study = study_at(tmp_path)
    held = [study.ask(), study.ask()]  # two trials running in "other workers"
    calls: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        return 0.0

    result = run_trials(study, objective, n_trials=2, timeout_s=0.5, poll_s=0.05)
    assert calls == []  # waited for the other workers' trials instead of overshooting
    assert result.running == 2
    # A worker that lost the race (asked after the budget was claimed) does no work:
    late = study.ask()
    with pytest.raises(Exception, match="budget"):
        _guarded(objective, 2)(late)
    assert late.user_attrs[BUDGET_REASON_ATTR]
    assert calls == []
    for trial in held:
        study.tell(trial, 1.0)


def test_nan_and_pruned_trials_never_become_best(tmp_path: Path) -> None:
    study = study_at(tmp_path)
    values = iter([float("nan"), 5.0, float("inf"), 1.0, 9.0])

    def objective(trial: optuna.Trial) -> float:
        quadratic(trial)
        value = next(values)
        if value == 9.0:
            trial.report(9.0, 1)
            raise optuna.TrialPruned("diverged")
        return value

    run_trials(study, objective, n_trials=3, timeout_s=None)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[0] == TrialState.PRUNED  # NaN: Optuna would fail it; pruned with the reason
    assert states[2] == TrialState.PRUNED  # +inf: Optuna would even keep it as best
    assert "nan" in study.trials[0].user_attrs[NON_FINITE_ATTR]
    assert study.best_value == 5.0
    report = optimal_config(study, "sqlite:///x")
    assert report["best_value"] == 5.0
    assert all(
        entry["value"] is None or math.isfinite(entry["value"])
        for entry in report["optimization_history"]
    )


def test_same_seed_same_trial_number_gives_same_params_and_workers_do_not_repeat(
    tmp_path: Path,
) -> None:
    worker_a, worker_b = study_at(tmp_path, "shared"), study_at(tmp_path, "shared")
    params = []
    for _ in range(3):
        for worker in (worker_a, worker_b):
            trial = worker.ask()
            quadratic(trial)
            params.append(tuple(sorted(trial.params.items())))
            worker.tell(trial, 0.0)
    assert len(set(params)) == len(params)  # no two workers drew the same start-up trial
    replay = study_at(tmp_path, "replay")
    trial = replay.ask()
    quadratic(trial)
    assert tuple(sorted(trial.params.items())) == params[0]  # seeded by (seed, number)


def test_a_study_refuses_a_worker_with_another_objective(tmp_path: Path) -> None:
    study_at(tmp_path, "fp")
    with pytest.raises(StudyMismatchError, match="steps_per_trial"):
        study_at(tmp_path, "fp", {"seed": 7, "steps_per_trial": 200})


def test_warm_start_enqueues_previous_best_once(tmp_path: Path) -> None:
    previous = {"learning_rate": 1e-3, "gamma": 0.99, "hidden_size": 64, "n_drivers": 3}
    study = study_at(tmp_path)
    assert enqueue_warm_start(study, previous, SPACE)
    assert not enqueue_warm_start(study_at(tmp_path), previous, SPACE)  # resumed: not again
    run_trials(study, quadratic, n_trials=2, timeout_s=None)
    first = min(study.get_trials(), key=lambda t: t.number)
    assert first.params == {"learning_rate": 1e-3, "gamma": 0.99, "hidden_size": 64}
    assert study.best_trial.number == 0


def test_optimal_config_format_round_trips(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    study = study_at(tmp_path, "report")
    run_trials(study, quadratic, n_trials=3, timeout_s=None)
    report = optimal_config(study, url)
    path = tmp_path / "out" / "optimal_config.json"
    write_json_atomic(path, report)
    data = json.loads(path.read_text())
    assert {"best_params", "best_value", "optimization_history"} <= set(data)
    assert data["best_value"] == study.best_value
    assert len(data["optimization_history"]) == 3
    for entry in data["optimization_history"]:
        assert {"number", "state", "value", "params", "duration"} <= set(entry)
        assert entry["state"] == "COMPLETE"
        assert entry["duration"] >= 0
    assert read_best_params(path) == study.best_params
    assert DQNConfig.from_json_file(path).learning_rate == study.best_params["learning_rate"]
    loaded = optuna.load_study(study_name="report", storage=url)  # plain Optuna can read it
    assert loaded.best_value == study.best_value
    assert [p.name for p in ONLINE_SPACE if p.name in data["best_params"]]


def test_tally_counts_states(tmp_path: Path) -> None:
    study = study_at(tmp_path)
    trial = study.ask()
    study.tell(trial, state=TrialState.PRUNED)
    study.tell(study.ask(), 2.0)
    study.ask()
    counts = tally(study)
    assert (counts.complete, counts.pruned, counts.running, counts.best) == (1, 1, 1, 2.0)
    assert counts.finished == 2
    assert counts.claimed == 3
