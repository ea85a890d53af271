"""From operator options to a `TuneConfig` + `ObjectiveSpec`: defaults and checks in one place.

The CLI command stays a thin parser; the daemon's re-tuning trigger builds the
same request. Defaults: the study lives in `<data_dir>/tuning.db`, the report
goes to `<data_dir>/optimal_config.json`, and when that report already exists
its best parameters warm-start the new run (re-tuning starts from the last answer).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.objective import ObjectiveSpec
from dispatchloop.tuning.report import read_best_params
from dispatchloop.tuning.study import PrunerKind
from dispatchloop.tuning.tune import DEFAULT_STUDY, TuneConfig, default_output, default_storage_url

logger = logging.getLogger(__name__)

PRUNERS: dict[str, PrunerKind] = {"median": "median", "hyperband": "hyperband", "none": "none"}


class TuneInputError(ValueError):
    """An option the tuner cannot use, in one sentence (exit code 2)."""


def build_request(
    settings: Settings,
    scenario: Scenario,
    *,
    trials: int | None = 50,
    timeout_s: float | None = None,
    storage: str | None = None,
    study: str = DEFAULT_STUDY,
    output: Path | None = None,
    steps_per_trial: int = 20_000,
    validation_episodes: int = 20,
    evaluations: int = 5,
    num_envs: int = 8,
    seed: int = 0,
    pruner: str = "median",
    heartbeat_s: int = 30,
    warm_start: Path | None = None,
    show_progress: bool | None = None,
) -> tuple[TuneConfig, ObjectiveSpec]:
    """Validate options and fill in the defaults under data_dir."""
    _check(trials is not None or timeout_s is not None, "give --trials, --timeout or both")
    _check(trials is None or trials >= 1, "--trials must be at least 1")
    _check(steps_per_trial >= evaluations >= 1, "--steps-per-trial must be >= --evaluations >= 1")
    _check(validation_episodes >= 1, "--validation-episodes must be at least 1")
    _check(heartbeat_s >= 1, "--heartbeat must be at least 1 second")
    pruner_kind = PRUNERS.get(pruner)
    if pruner_kind is None:
        raise TuneInputError("--pruner must be median, hyperband or none")
    if storage is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = default_storage_url(settings)
    _check(
        storage.startswith(("sqlite://", "postgresql")),
        "--storage must be a sqlite:// or postgresql+psycopg:// URL",
    )
    output = output or default_output(settings)
    config = TuneConfig(
        storage_url=storage,
        study_name=study,
        n_trials=trials,
        timeout_s=timeout_s,
        pruner=pruner_kind,
        heartbeat_interval_s=heartbeat_s,
        output=output,
        warm_start=_warm_start(warm_start, output),
        show_progress=show_progress,
    )
    spec = ObjectiveSpec(
        scenario=scenario,
        reward=settings.reward,
        steps_per_trial=steps_per_trial,
        validation_episodes=validation_episodes,
        n_evaluations=evaluations,
        num_envs=num_envs,
        seed=seed,
    )
    return config, spec


def _warm_start(explicit: Path | None, output: Path) -> Mapping[str, Any] | None:
    """Explicit --warm-start file, else the previous report at --output, else nothing."""
    source = explicit if explicit is not None else (output if output.is_file() else None)
    if source is None:
        return None
    try:
        params = read_best_params(source)
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        if explicit is not None:
            raise TuneInputError(f"cannot read --warm-start {str(source)!r}: {exc}") from exc
        logger.warning("previous report %s is unreadable (%s); no warm start", source, exc)
        return None
    logger.info("warm start from %s", source)
    return params or None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TuneInputError(message)
