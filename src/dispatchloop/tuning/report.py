"""optimal_config.json: the study's outcome in the original tuner's format, plus context.

The original file had `best_params`, `best_value` and `optimization_history`
(one entry per trial: number, state, value, params, duration); existing
tooling reads those keys, and `DQNConfig.from_json_file` accepts the file
directly. The added keys (`best_config`, counts, study name and storage) make
the file self-explaining: which study it came from and what was searched.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.tuning.space import DEFAULT_CONFIG, config_from_params

REPORT_VERSION = 1


def trial_history(study: optuna.Study) -> list[dict[str, Any]]:
    """One JSON-able entry per trial, in trial-number order."""
    history = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
        history.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": value,
                "params": dict(trial.params),
                "duration": duration,
                "user_attrs": dict(trial.user_attrs),
            }
        )
    return history


def optimal_config(
    study: optuna.Study, storage_url: str, base: DQNConfig = DEFAULT_CONFIG
) -> dict[str, Any]:
    """The report as a dict; best_* are None while no trial has completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    counts = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return {
        "format_version": REPORT_VERSION,
        "study_name": study.study_name,
        "storage": mask_url(storage_url),
        "best_params": dict(best.params) if best is not None else None,
        "best_value": best.value if best is not None else None,
        "best_trial": best.number if best is not None else None,
        "best_config": config_from_params(best.params, base).to_dict() if best else None,
        "trial_counts": counts,
        "objective": study.user_attrs.get("dispatchloop.objective"),
        "optimization_history": trial_history(study),
    }


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_best_params(path: Path) -> dict[str, Any]:
    """`best_params` of an optimal_config.json, or the file itself if it is plain params."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    params = data.get("best_params", data)
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"best_params in {path} is not a JSON object")
    return params


def mask_url(url: str) -> str:
    """The storage URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
