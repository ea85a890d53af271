"""What the `tune` and `compare` CLI commands call: options in, result and its rendering out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from dispatchloop.evaluation.simulated import ScenarioSource
from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.compare import CompareInputError, CompareRequest, compare
from dispatchloop.tuning.request import TuneInputError, build_request
from dispatchloop.tuning.study import StudyMismatchError
from dispatchloop.tuning.tune import TuneResult
from dispatchloop.tuning.tune import tune as tune_study

__all__ = [
    "CompareInputError",
    "CompareRequest",
    "TuneInputError",
    "compare",
    "result_json",
    "run_tune",
    "scenario_source",
    "summary",
]


def scenario_source(value: str) -> ScenarioSource:
    """`default` or `store`, else a TuneInputError naming the choices."""
    if value == "default":
        return "default"
    if value == "store":
        return "store"
    raise TuneInputError(f"--scenario must be default or store, got {value!r}")


def run_tune(settings: Settings, scenario: Scenario, **options: Any) -> TuneResult:
    """Build the request from CLI options and run the study in this process."""
    config, spec = build_request(settings, scenario, **options)
    # Optuna's own per-trial lines would tear the progress bar; its warnings still reach
    # the root logger (JSON in a service) through propagation.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return tune_study(config, spec)
    except StudyMismatchError as exc:
        raise TuneInputError(str(exc)) from exc


def result_json(result: TuneResult) -> dict[str, Any]:
    data = result._asdict()
    data["best_config"] = result.best_config.to_dict() if result.best_config else None
    data["output"] = str(result.output) if isinstance(result.output, Path) else None
    return data


def summary(result: TuneResult) -> str:
    best = "none completed" if result.best_value is None else f"{result.best_value:.4g}"
    lines = [
        f"study {result.study_name} ({result.storage}): {result.complete} complete, "
        f"{result.pruned} pruned, {result.failed} failed in {result.wall_seconds:.0f} s",
        f"best validation return: {best}",
    ]
    if result.best_params:
        lines.extend(f"  {name} = {value!r}" for name, value in result.best_params.items())
    if result.output is not None:
        lines.append(f"report: {result.output}")
    return "\n".join(lines)
