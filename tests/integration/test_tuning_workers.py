"""Real `dispatchloop tune` processes on a real PostgreSQL study: sharing, SIGKILL, resume.

Tiny budgets (a few hundred env steps per trial) keep each trial around a
second; what is tested is the coordination, not the tuning quality.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dispatchloop.tuning.objective import TRAIN_SEED_ATTR
from dispatchloop.tuning.runner import WORKER_ATTR
from dispatchloop.tuning.study import make_pruner, make_storage, open_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [
    "--validation-episodes",
    "3",
    "--evaluations",
    "2",
    "--heartbeat",
    "1",
]


def tune_command(
    storage: str, study: str, trials: int, output: Path, steps_per_trial: int = 400
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dispatchloop.cli",
        "tune",
        "--storage",
        storage,
        "--study",
        study,
        "--trials",
        str(trials),
        "--output",
        str(output),
        "--json",
        *TINY,
        "--steps-per-trial",
        str(steps_per_trial),
    ]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; any still alive at the end are killed by PID."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def start(
    command: list[str], tmp_path: Path, started: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    env = {**os.environ, "DISPATCHLOOP_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started.append(process)
    return process


def finish(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, object]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    result: dict[str, object] = json.loads(stdout)
    return result


def test_two_workers_share_one_postgres_study(
    pg_url: str, tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    n_trials = 8
    outputs = [tmp_path / "a.json", tmp_path / "b.json"]
    processes = [
        start(tune_command(pg_url, "shared", n_trials, out), tmp_path, workers) for out in outputs
    ]
    results = [finish(process) for process in processes]

    study = optuna.load_study(study_name="shared", storage=pg_url)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials  # together, not n_trials each
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    trained = [t for t in trials if TRAIN_SEED_ATTR in t.user_attrs]
    assert len(trained) == n_trials  # no trial was trained twice, none beyond the budget
    assert len({json.dumps(t.params, sort_keys=True) for t in trained}) == n_trials
    assert len({t.user_attrs[WORKER_ATTR] for t in trained}) == 2  # both did work
    for result, output in zip(results, outputs, strict=True):
        assert result["best_value"] == study.best_value  # both see the study's best
        assert json.loads(output.read_text())["best_params"] == study.best_params


def test_killed_worker_is_resumed_and_its_trial_rerun(
    pg_url: str, tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    n_trials = 4
    output = tmp_path / "out.json"
    # Trials of a few seconds: with 400 steps a faster simulator (or a quiet host) finished
    # all four between two looks at the study, and the kill never landed in a trial.
    command = tune_command(pg_url, "resume", n_trials, output, steps_per_trial=3_000)
    for _attempt in range(3):  # the trial seen running may finish just before the kill lands
        _kill_during_a_trial(start(command, tmp_path, workers), pg_url)
        after_kill = optuna.load_study(study_name="resume", storage=pg_url).get_trials()
        running = [t.number for t in after_kill if t.state == TrialState.RUNNING]
        if running:
            break
    assert running, "could not kill the worker in the middle of a trial"
    killed_number = running[0]
    kept = {t.number: t.value for t in after_kill if t.state == TrialState.COMPLETE}
    assert kept

    finish(start(command, tmp_path, workers))

    study = optuna.load_study(study_name="resume", storage=pg_url)
    by_number = {t.number: t for t in study.get_trials()}
    for number, value in kept.items():  # completed work survived the kill unchanged
        assert by_number[number].value == value
    assert by_number[killed_number].state == TrialState.FAIL  # went stale, was failed
    retries = [t for t in by_number.values() if t.system_attrs.get("failed_trial") is not None]
    assert retries
    assert min(t.number for t in retries) > killed_number  # numbering continued
    finished = [
        t for t in by_number.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    assert len(finished) == n_trials
    assert json.loads(output.read_text())["best_value"] == study.best_value


def _kill_during_a_trial(
    process: subprocess.Popen[str], storage: str, timeout: float = 240
) -> None:
    """SIGKILL the worker while it runs a trial after at least one completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "worker ended before it could be killed"
        try:
            trials = optuna.load_study(study_name="resume", storage=storage).get_trials()
        except KeyError:  # study not created yet
            time.sleep(0.2)
            continue
        done = {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if done and running:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return
        time.sleep(0.1)
    pytest.fail("no trial was running after one completed within the timeout")


def test_workers_starting_together_on_an_empty_database_all_get_the_study(pg_url: str) -> None:
    """Optuna's table creation races on a fresh database; every worker must still start."""
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_one() -> None:
        barrier.wait()
        try:
            storage = make_storage(pg_url, heartbeat_interval=5)
            open_study(
                storage, "race", seed=0, pruner=make_pruner("none", 1), fingerprint={"seed": 0}
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert optuna.load_study(study_name="race", storage=pg_url).user_attrs
