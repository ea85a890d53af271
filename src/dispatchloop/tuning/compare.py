"""`compare`: is the tuned configuration better than the baseline one, measured?

The original compare_models.py trained two configurations and printed their
mean rewards. Here both sides play the same seeded TEST episodes (never the
validation seeds the tuner selected on), and the report is the evaluation
engineer's paired A/B: per-episode differences with a 99 % t interval and the
guardrails (late rate, cancellation rate).

A side is either a params file (plain DQNConfig JSON or an optimal_config.json),
trained here with `training_seeds` different seeds — the same seeds for both
sides — or a trained model directory, loaded with its sha256 checked. With
several training seeds a side's per-episode figures are the mean over its
models, so the interval is about these trained models on the test episodes;
the per-seed means are listed so training-seed spread stays visible.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dispatchloop.evaluation.paired import FloatArray
from dispatchloop.evaluation.policies import EvaluationInputError, load_q_network
from dispatchloop.evaluation.report import RETURN, EvaluationReport, build_report
from dispatchloop.evaluation.simulated import run_dispatch
from dispatchloop.progress import progress
from dispatchloop.rl.dqn import TrainingDivergedError, train_dispatch
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import QNetwork
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.rollout import test_seeds
from dispatchloop.sim.scenario import Scenario

logger = logging.getLogger(__name__)

SIDES = ("baseline", "candidate")


class CompareInputError(ValueError):
    """A side that is neither a readable params file nor a model directory (exit code 2)."""


@dataclass(frozen=True)
class CompareRequest:
    baseline: Path
    candidate: Path
    episodes: int = 100
    """Test episodes both sides play (paired by seed)."""
    training_seeds: int = 1
    """Independent training runs per params file (same seeds for both sides)."""
    steps: int = 20_000
    """Environment steps of each training run (params files only)."""
    seed: int = 0
    num_envs: int = 8
    show_progress: bool | None = None


class SideResult(NamedTuple):
    source: str
    kind: str  # "params" or "model"
    per_model_mean_return: list[float]


class CompareResult(NamedTuple):
    report: EvaluationReport
    sides: dict[str, SideResult]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.report.to_json(),
            "sides": {name: side._asdict() for name, side in self.sides.items()},
        }


def compare(request: CompareRequest, scenario: Scenario, reward: RewardSettings) -> CompareResult:
    """Both sides on the same TEST seeds; the candidate paired against the baseline."""
    if request.training_seeds < 1:
        raise CompareInputError("--seeds must be at least 1")
    if request.episodes < 2 or request.seed < 0:
        raise CompareInputError("--episodes must be at least 2 and --seed non-negative")
    seeds = list(test_seeds(request.seed + request.episodes))[request.seed :]
    runs: dict[str, dict[str, FloatArray]] = {}
    sides: dict[str, SideResult] = {}
    for name, path in zip(SIDES, (request.baseline, request.candidate), strict=True):
        policies, kind = _side_policies(path, name, request, scenario, reward)
        per_model = [
            run_dispatch({name: policy}, scenario, reward, seeds)[name] for policy in policies
        ]
        runs[name] = {
            key: np.mean([metrics[key] for metrics in per_model], axis=0) for key in per_model[0]
        }
        means = [float(np.mean(metrics[RETURN])) for metrics in per_model]
        sides[name] = SideResult(str(path), kind, means)
    report = build_report(
        runs,
        environment="dispatch",
        seeds=seeds,
        baseline="baseline",
        rng=np.random.default_rng(request.seed),
    )
    return CompareResult(report, sides)


def _side_policies(
    path: Path,
    name: str,
    request: CompareRequest,
    scenario: Scenario,
    reward: RewardSettings,
) -> tuple[list[DQNPolicy], str]:
    if path.is_dir():
        try:
            return [DQNPolicy(load_q_network(path), name=name)], "model"
        except EvaluationInputError as exc:
            raise CompareInputError(str(exc)) from exc
    config = read_config(path)
    seeds = training_seeds(request.seed, request.training_seeds)
    policies = []
    with progress(
        f"train {name}", len(seeds), logger=logger, show_bar=request.show_progress
    ) as bar:
        for seed in seeds:
            policies.append(DQNPolicy(_train(config, scenario, reward, request, seed), name=name))
            bar.update(1, seed=seed)
    return policies, "params"


def _train(
    config: DQNConfig,
    scenario: Scenario,
    reward: RewardSettings,
    request: CompareRequest,
    seed: int,
) -> QNetwork:
    try:
        return train_dispatch(
            config, scenario, reward, request.steps, seed, num_envs=request.num_envs
        ).q_network
    except TrainingDivergedError as exc:
        raise CompareInputError(f"training diverged with seed {seed}: {exc}") from exc


def read_config(path: Path) -> DQNConfig:
    """A DQNConfig from plain params or an optimal_config.json, or one clear sentence."""
    if not path.is_file():
        raise CompareInputError(f"{str(path)!r} is neither a params file nor a model directory")
    try:
        return DQNConfig.from_json_file(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CompareInputError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CompareInputError(f"{str(path)!r} holds no usable DQN params: {exc}") from exc


def training_seeds(seed: int, count: int) -> Sequence[int]:
    """Training seeds shared by both sides (far from the seeded episode ranges)."""
    return [seed * 1_000 + index for index in range(count)]
