"""The tuning objective: train a DQN in-process, score it on VALIDATION episodes.

One trial = one `train_dispatch` run with an `EvalCallback` that scores the
greedy policy on the same seeded validation episodes at regular points of
training. Each score goes to Optuna (`trial.report`), and the pruner may stop
a trial that is behind the median of earlier trials at the same point. The
objective value is the mean validation return of the final network.

Validation seeds only: the test seeds are reserved for `compare`, `evaluate`
and promotion, so a configuration is never judged on the episodes it was
selected on. A trial that diverges (NaN/inf loss or Q-values) or whose score
is not finite is pruned with the reason recorded, so it can never be best.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import optuna

from dispatchloop.decisions.featurizer import FEATURIZER_VERSION
from dispatchloop.rl.callbacks import EvalCallback
from dispatchloop.rl.dqn import TrainingDivergedError, train_dispatch
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.rollout import run_episodes, validation_seeds
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.runner import NON_FINITE_ATTR
from dispatchloop.tuning.space import DEFAULT_CONFIG, ONLINE_SPACE, Param, suggest_config

logger = logging.getLogger(__name__)

DIVERGED_ATTR = NON_FINITE_ATTR
TRAIN_SEED_ATTR = "dispatchloop.train_seed"


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything that defines what a trial's number means; stored on the study."""

    scenario: Scenario
    reward: RewardSettings
    steps_per_trial: int
    validation_episodes: int
    n_evaluations: int = 5
    num_envs: int = 8
    seed: int = 0
    base_config: DQNConfig = DEFAULT_CONFIG
    space: tuple[Param, ...] = ONLINE_SPACE

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the objective: trials with other values are not comparable."""
        return {
            "scenario": self.scenario.to_dict(),
            "reward": self.reward.model_dump(mode="json"),
            "steps_per_trial": self.steps_per_trial,
            "validation_episodes": self.validation_episodes,
            "n_evaluations": self.n_evaluations,
            "num_envs": self.num_envs,
            "seed": self.seed,
            "base_config": self.base_config.to_dict(),
            "space": [dataclasses.asdict(param) for param in self.space],
            "featurizer_version": FEATURIZER_VERSION,
        }


class DispatchObjective:
    """Callable objective for `optuna.Study.optimize` (maximise mean validation return)."""

    def __init__(self, spec: ObjectiveSpec) -> None:
        if spec.steps_per_trial < spec.n_evaluations:
            raise ValueError("steps_per_trial must be at least n_evaluations")
        self.spec = spec
        self.seeds = list(validation_seeds(spec.validation_episodes))

    def evaluate(self, policy: DQNPolicy) -> float:
        """Mean return of `policy` over the validation episodes (paired across trials)."""
        results = run_episodes(policy, self.spec.scenario, self.spec.reward, self.seeds)
        return float(np.mean(results.returns))

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        config = suggest_config(trial, spec.base_config, spec.space)
        train_seed = spec.seed * 1_000_003 + trial.number
        trial.set_user_attr(TRAIN_SEED_ATTR, train_seed)
        reporter = _Reporter(trial, spec.steps_per_trial)
        evaluation = EvalCallback(
            self.evaluate, max(spec.steps_per_trial // spec.n_evaluations, 1), reporter.on_result
        )
        try:
            result = train_dispatch(
                config,
                spec.scenario,
                spec.reward,
                total_steps=spec.steps_per_trial,
                seed=train_seed,
                callbacks=[evaluation],
                num_envs=spec.num_envs,
            )
        except TrainingDivergedError as exc:
            _prune(trial, f"training diverged: {exc}")
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after evaluation {reporter.reports}")
        value = _final_score(evaluation, result.env_steps)
        if value is None:
            value = self.evaluate(DQNPolicy(result.q_network))
        if not math.isfinite(value):
            _prune(trial, f"validation return is not finite ({value})")
        return value


def _final_score(evaluation: EvalCallback, env_steps: int) -> float | None:
    """The callback's score of the final network, when its last evaluation was at the end."""
    if evaluation.results and evaluation.results[-1][0] == env_steps:
        return evaluation.results[-1][1]
    return None


class _Reporter:
    """EvalCallback's on_result: report to Optuna, stop training when it says prune."""

    def __init__(self, trial: optuna.Trial, total_steps: int) -> None:
        self._trial = trial
        self._total_steps = total_steps
        self.reports = 0
        self.pruned = False

    def on_result(self, steps: int, score: float) -> bool:
        if not math.isfinite(score):
            self.pruned = True
            self._trial.set_user_attr(DIVERGED_ATTR, f"validation return {score}")
            return False
        self.reports += 1
        # Steps are evaluation indices, equal for every trial, so the pruner compares
        # like with like even if env steps overshoot a multiple by a vector step.
        self._trial.report(score, self.reports)
        if steps >= self._total_steps:
            return True  # training is over: a finished trial completes, it is not pruned
        self.pruned = self._trial.should_prune()
        return not self.pruned


def _prune(trial: optuna.Trial, reason: str) -> NoReturn:
    logger.warning("trial %d: %s; pruned", trial.number, reason)
    trial.set_user_attr(DIVERGED_ATTR, reason)
    raise optuna.TrialPruned(reason)
