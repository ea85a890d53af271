"""Stage `tune`: re-tune the DQN's hyperparameters on the fitted scenario, warm-started.

Wraps `tuning.tune` (itself a typed stage) with the loop's inputs: the scenario
comes from the fit, never from the tuner (DESIGN.md: a tuner that shrinks the
problem is cheating), and the previous best parameters are tried first. The
study lives in RDB storage, so a tuning child killed by the stop bound loses at
most its running trial (Optuna's heartbeat marks it failed and re-runs it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatchloop.errors import InputError
from dispatchloop.pipeline.common import StageStoppedError, StopFlag
from dispatchloop.pipeline.fit import ScenarioFit
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings
from dispatchloop.tuning.objective import ObjectiveSpec
from dispatchloop.tuning.tune import TuneConfig, tune


@dataclass(frozen=True)
class TuneSpec:
    """One re-tuning run; picklable for the child process."""

    storage_url: str
    """Optuna RDB storage (the study survives a killed child)."""
    study_name: str
    """One study per scenario fingerprint: trials of another world are not comparable."""
    fit: ScenarioFit
    """The scenario the objective trains and validates on."""
    reward: RewardSettings
    """The reward weights the objective scores with."""
    n_trials: int
    """Trials to finish in the study (across all workers)."""
    steps_per_trial: int
    """Simulator steps of each trial's training."""
    timeout_s: float | None = None
    """Stop starting trials after this long."""
    validation_episodes: int = 20
    """VALIDATION episodes per evaluation (TEST seeds stay for the judge)."""
    warm_start: Mapping[str, Any] | None = field(default=None)
    """The previous best parameters, tried first."""
    output: Path | None = None
    """Where optimal_config.json is written atomically (None: not written)."""
    seed: int = 0
    """Sampler and training seed."""


@dataclass(frozen=True)
class TunedParams:
    """The study's best after this run."""

    best_value: float | None
    """Mean validation return of the best trial (None: no trial completed)."""
    best_params: dict[str, Any] | None
    """The best trial's parameters (the next run's warm start)."""
    config: DQNConfig | None
    """The DQN configuration those parameters give."""
    complete: int
    """Completed trials in the study."""
    pruned: int
    """Pruned trials in the study."""
    warm_started: bool
    """Whether the previous best was enqueued by this run."""
    wall_seconds: float
    """Duration of this run."""


def tune_params(spec: TuneSpec, stop: StopFlag) -> TunedParams:
    """Run the study; InputError for an impossible request."""
    if stop.is_set():
        raise StageStoppedError("tuning stopped on request before it started")
    try:
        objective = ObjectiveSpec(
            scenario=spec.fit.scenario,
            reward=spec.reward,
            steps_per_trial=spec.steps_per_trial,
            validation_episodes=spec.validation_episodes,
            seed=spec.seed,
        )
        result = tune(
            TuneConfig(
                storage_url=spec.storage_url,
                study_name=spec.study_name,
                n_trials=spec.n_trials,
                timeout_s=spec.timeout_s,
                warm_start=spec.warm_start,
                output=spec.output,
                show_progress=False,
            ),
            objective,
        )
    except ValueError as exc:
        raise InputError(f"cannot tune as requested: {exc}") from exc
    return TunedParams(
        best_value=result.best_value,
        best_params=result.best_params,
        config=result.best_config,
        complete=result.complete,
        pruned=result.pruned,
        warm_started=result.warm_started,
        wall_seconds=result.wall_seconds,
    )
