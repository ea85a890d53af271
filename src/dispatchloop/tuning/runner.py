"""Running trials of a shared study until a study-wide budget is spent.

`--trials N` means N trials for the study, whichever worker runs them: two
workers with `--trials 10` finish 10 together, not 20, and not 11. Optuna's
`MaxTrialsCallback` only checks after a trial, so two workers can both start
trial N+1. Here each trial first claims a slot: trial numbers are assigned by
the storage in one order, so "fewer than N live trials with a lower number"
gives every worker the same answer. A trial that loses the race is failed at
once with the reason recorded, before any training. A worker whose budget is
taken by trials still running elsewhere waits for them instead of leaving: if
their process dies, their trial goes stale, is re-enqueued and someone must run it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import optuna
from optuna.trial import TrialState

logger = logging.getLogger(__name__)

Objective = Callable[[optuna.Trial], float]
BUDGET_REASON_ATTR = "dispatchloop.fail_reason"
NON_FINITE_ATTR = "dispatchloop.diverged"
WORKER_ATTR = "dispatchloop.worker"
"""host:pid of the process that ran the trial (operators: who ran what; tests: sharing)."""
LIVE_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class BudgetSpentError(Exception):
    """This trial was created after the study's trial budget had been claimed."""


class Tally(NamedTuple):
    """Trial counts of a study by state; `best` is None until a trial completes."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best: float | None

    @property
    def finished(self) -> int:
        """Trials that count against the budget and are done (complete or pruned)."""
        return self.complete + self.pruned

    @property
    def claimed(self) -> int:
        """Trials that count against the budget: finished, running or queued."""
        return self.finished + self.running + self.waiting


def tally(study: optuna.Study) -> Tally:
    trials = study.get_trials(deepcopy=False)
    count = {state: 0 for state in TrialState}
    for trial in trials:
        count[trial.state] += 1
    complete = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return Tally(
        complete=count[TrialState.COMPLETE],
        pruned=count[TrialState.PRUNED],
        failed=count[TrialState.FAIL],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        best=max(complete) if complete else None,
    )


def run_trials(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int | None,
    timeout_s: float | None,
    on_progress: Callable[[Tally], None] = lambda _tally: None,
    poll_s: float = 1.0,
) -> Tally:
    """Run trials until the study has `n_trials` finished ones or `timeout_s` has passed.

    Like Optuna's timeout, the timeout is checked between trials: a trial that
    has started runs to its end (it is pruned early if it is not promising).
    """
    if n_trials is None and timeout_s is None:
        raise ValueError("give a trial budget, a timeout or both")
    started = time.monotonic()
    guarded = _guarded(objective, n_trials)
    while timeout_s is None or time.monotonic() - started < timeout_s:
        _fail_stale_trials(study)
        current = tally(study)
        on_progress(current)
        if n_trials is not None and current.finished >= n_trials:
            break
        if n_trials is not None and current.claimed >= n_trials and current.waiting == 0:
            time.sleep(poll_s)  # the last trials run elsewhere; stay in case they die
            continue
        study.optimize(guarded, n_trials=1, catch=(BudgetSpentError,))
    final = tally(study)
    on_progress(final)
    return final


def _fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers FAIL (their retry is enqueued by the storage callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _guarded(objective: Objective, n_trials: int | None) -> Objective:
    """Claim a budget slot first; prune a non-finite result (Optuna would keep +inf as best)."""

    def claim_then_run(trial: optuna.Trial) -> float:
        if n_trials is not None and _live_before(trial) >= n_trials:
            trial.set_user_attr(BUDGET_REASON_ATTR, "trial budget already claimed by other workers")
            raise BudgetSpentError(f"study budget of {n_trials} trials is claimed")
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        value = objective(trial)
        if not math.isfinite(value):
            trial.set_user_attr(NON_FINITE_ATTR, f"objective returned {value}")
            logger.warning("trial %d returned %s; pruned", trial.number, value)
            raise optuna.TrialPruned(f"objective returned {value}")
        return value

    return claim_then_run


def _live_before(trial: optuna.Trial) -> int:
    """Budget-counting trials numbered before this one (the storage's order)."""
    others = trial.study.get_trials(deepcopy=False, states=LIVE_STATES)
    return sum(1 for other in others if other.number < trial.number)
