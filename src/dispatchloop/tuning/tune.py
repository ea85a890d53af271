"""`tune`: typed request in (`TuneConfig`), typed result out (`TuneResult`).

The CLI, the daemon's re-tuning trigger and the benchmark all call `tune`;
nothing parses argv or scrapes a subprocess. The study lives in RDB storage,
so a run can be killed and restarted, and several processes can share it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from threadpoolctl import threadpool_limits

from dispatchloop.progress import progress
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import Settings
from dispatchloop.tuning.objective import DispatchObjective, ObjectiveSpec
from dispatchloop.tuning.report import mask_url, optimal_config, write_json_atomic
from dispatchloop.tuning.runner import Objective, Tally, run_trials
from dispatchloop.tuning.space import DEFAULT_CONFIG, Param, config_from_params
from dispatchloop.tuning.study import (
    PrunerKind,
    enqueue_warm_start,
    make_pruner,
    make_storage,
    open_study,
)

logger = logging.getLogger(__name__)

DEFAULT_STUDY = "dispatch-dqn"


def default_storage_url(settings: Settings) -> str:
    """SQLite file under data_dir: embedded default, fine for one or two local workers."""
    return f"sqlite:///{(settings.data_dir / 'tuning.db').resolve()}"


def default_output(settings: Settings) -> Path:
    return settings.data_dir / "optimal_config.json"


@dataclass(frozen=True)
class TuneConfig:
    """How to run the study (the objective itself is an `ObjectiveSpec`)."""

    storage_url: str
    study_name: str = DEFAULT_STUDY
    n_trials: int | None = 50
    """Total trials for the study across all workers; None = until the timeout."""
    timeout_s: float | None = None
    pruner: PrunerKind = "median"
    heartbeat_interval_s: int = 30
    """A killed worker's trial is declared stale after twice this and re-run."""
    output: Path | None = None
    warm_start: Mapping[str, Any] | None = field(default=None)
    """Previous best parameters to try first (enqueued once per study)."""
    show_progress: bool | None = None
    """Progress bar on a terminal (None: when stderr is a terminal), log lines otherwise."""


class TuneResult(NamedTuple):
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config: DQNConfig | None
    complete: int
    pruned: int
    failed: int
    wall_seconds: float
    warm_started: bool
    output: Path | None


def tune(config: TuneConfig, spec: ObjectiveSpec) -> TuneResult:
    """Tune the DQN on the spec's scenario; returns the study's best (from all workers).

    A worker is one core: torch already trains on one thread, and NumPy's BLAS pool is
    limited to one here too. Unlimited, two workers on two cores ran 4 threads and
    scaled 1.47x; limited, 2.09x (benchmarks/tuning.py). Scale out with more workers.
    """
    with threadpool_limits(limits=1):
        return tune_objective(
            config,
            DispatchObjective(spec),
            fingerprint=spec.fingerprint(),
            space=spec.space,
            n_reports=spec.n_evaluations,
            base=spec.base_config,
        )


def tune_objective(
    config: TuneConfig,
    objective: Objective,
    *,
    fingerprint: Mapping[str, Any],
    space: Sequence[Param],
    n_reports: int,
    base: DQNConfig = DEFAULT_CONFIG,
) -> TuneResult:
    """The study machinery around any objective (tests drive it with tiny ones)."""
    started = time.monotonic()
    storage = make_storage(config.storage_url, config.heartbeat_interval_s)
    study = open_study(
        storage,
        config.study_name,
        seed=int(fingerprint.get("seed", 0)),
        pruner=make_pruner(config.pruner, n_reports),
        fingerprint=fingerprint,
    )
    warm = bool(config.warm_start) and enqueue_warm_start(study, config.warm_start or {}, space)
    with progress(
        f"tune {config.study_name}", config.n_trials, logger=logger, show_bar=config.show_progress
    ) as bar:
        shown = {"done": 0}

        def on_progress(tally: Tally) -> None:
            bar.update(
                tally.finished - shown["done"],
                best=tally.best if tally.best is not None else "-",
                pruned=tally.pruned,
                running=tally.running,
            )
            shown["done"] = tally.finished

        final = run_trials(
            study,
            objective,
            n_trials=config.n_trials,
            timeout_s=config.timeout_s,
            on_progress=on_progress,
        )
    report = optimal_config(study, config.storage_url, base)
    if config.output is not None:
        write_json_atomic(config.output, report)
    return _result(
        study=study,
        config=config,
        final=final,
        report=report,
        warm=warm,
        wall=time.monotonic() - started,
        base=base,
    )


def _result(
    *,
    study: optuna.Study,
    config: TuneConfig,
    final: Tally,
    report: Mapping[str, Any],
    warm: bool,
    wall: float,
    base: DQNConfig,
) -> TuneResult:
    params = report["best_params"]
    return TuneResult(
        study_name=study.study_name,
        storage=mask_url(config.storage_url),
        best_value=report["best_value"],
        best_params=params,
        best_config=config_from_params(params, base) if params is not None else None,
        complete=final.complete,
        pruned=final.pruned,
        failed=final.failed,
        wall_seconds=wall,
        warm_started=warm,
        output=config.output,
    )
