"""Opening a shared, resumable Optuna study: storage, sampler, pruner, warm start.

Several `dispatchloop tune` processes may share one study through an RDB
storage (SQLite file by default, PostgreSQL for real scale-out). What makes
that safe:

- heartbeats: every running trial records a heartbeat; a trial whose process
  was killed goes stale after the grace period, is marked FAIL and re-enqueued
  with the same parameters (`RetryHeartbeatStaleTrialCallback`), so a SIGKILL loses at
  most the work of the trial in flight;
- a sampler seeded per trial number (not per process), so two workers never
  draw the same random start-up parameters and one worker's run is reproducible;
- constant liar TPE, so parallel workers do not all pile onto the same region;
- an objective fingerprint stored on the study, so a worker started with a
  different budget or scenario cannot silently mix incomparable trials.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import optuna
from optuna.samplers import BaseSampler, TPESampler
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import exc as sa_exc

from dispatchloop.tuning.space import Param, warm_start_params

logger = logging.getLogger(__name__)

PrunerKind = Literal["median", "hyperband", "none"]
FINGERPRINT_ATTR = "dispatchloop.objective"
MAX_RETRIES = 2
"""Times a trial killed with its process is re-run before it stays failed."""


class StudyMismatchError(Exception):
    """The named study exists but was created for a different objective."""


class TrialSeededTPESampler(BaseSampler):
    """Multivariate constant-liar TPE whose random state is derived from the trial number.

    Seeding one sampler per process would make two workers with the same
    `--seed` propose identical start-up trials (duplicated work); seeding from
    the process id would make a single worker's study irreproducible. Deriving
    the seed from (seed, trial number) gives both: distinct draws for distinct
    trials whichever worker runs them, and the same draws for the same history.
    """

    def __init__(self, seed: int, n_startup_trials: int = 10) -> None:
        self._seed = seed
        self._n_startup_trials = n_startup_trials
        self._current = self._make(0)

    def _make(self, number: int) -> TPESampler:
        trial_seed = int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])
        return TPESampler(
            seed=trial_seed,
            n_startup_trials=self._n_startup_trials,
            multivariate=True,
            constant_liar=True,
        )

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        space: dict[str, optuna.distributions.BaseDistribution]
        space = self._current.infer_relative_search_space(study, trial)
        return space

    def sample_relative(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        search_space: dict[str, optuna.distributions.BaseDistribution],
    ) -> dict[str, Any]:
        params: dict[str, Any] = self._current.sample_relative(study, trial, search_space)
        return params

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._current = self._make(trial.number)
        self._current.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._current.after_trial(study, trial, state, values)


def make_pruner(kind: PrunerKind, n_reports: int) -> optuna.pruners.BasePruner:
    """Median pruning (the original's choice) by default; Hyperband or none on request.

    Steps are evaluation indices 1..n_reports, identical for every trial, so the
    median is always taken over trials at the same point of training.
    """
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(n_reports, 1), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def make_storage(url: str, heartbeat_interval: int, attempts: int = 5) -> RDBStorage:
    """RDB storage with heartbeats, so trials of killed workers are detected and retried.

    Workers started together on an empty database race to create Optuna's tables
    (PostgreSQL answers the loser with a unique violation on pg_type); the loser
    simply tries again and finds the tables made.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _rdb_storage(url, heartbeat_interval)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError) as exc:
            if attempt == attempts:
                raise
            logger.warning("creating the study tables raced another worker (%s); retrying", exc)
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def _rdb_storage(url: str, heartbeat_interval: int) -> RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several processes may share the file: wait for a lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        # Heartbeats have been "experimental" since Optuna 2.8; they are what we rely on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=2 * heartbeat_interval,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )


def open_study(
    storage: RDBStorage,
    study_name: str,
    *,
    seed: int,
    pruner: optuna.pruners.BasePruner,
    fingerprint: Mapping[str, Any],
) -> optuna.Study:
    """Create the study or join/resume an existing one made for the same objective."""
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        sampler=TrialSeededTPESampler(seed),
        pruner=pruner,
        load_if_exists=True,
    )
    wanted = json.loads(json.dumps(dict(fingerprint)))  # as stored: tuples become lists
    existing = study.user_attrs.get(FINGERPRINT_ATTR)
    if existing is None:
        study.set_user_attr(FINGERPRINT_ATTR, wanted)
    elif existing != wanted:
        raise StudyMismatchError(_mismatch_sentence(study_name, existing, wanted))
    return study


def _mismatch_sentence(name: str, existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = sorted(key for key in {*existing, *wanted} if existing.get(key) != wanted.get(key))
    return (
        f"study {name!r} was created with different {', '.join(keys)}; "
        "pass the same options to join it or choose another --study name"
    )


def enqueue_warm_start(
    study: optuna.Study, params: Mapping[str, Any], space: Sequence[Param]
) -> bool:
    """Enqueue the previous best parameters as the next trial (once per study).

    Returns whether a trial was enqueued: nothing is enqueued when no parameter
    survives validation, or when the same parameters were already tried here
    (a resumed run must not re-enqueue them every time it starts).
    """
    legal = warm_start_params(params, space)
    if not legal:
        return False
    before = len(study.get_trials(deepcopy=False))
    study.enqueue_trial(legal, skip_if_exists=True)
    enqueued = len(study.get_trials(deepcopy=False)) > before
    if enqueued:
        logger.info("warm start: enqueued previous best parameters %s", legal)
    return enqueued
