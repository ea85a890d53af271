"""`dispatchloop train`: one training run from options to a verified model directory.

Four paths, chosen by the options:
- `env_id` set: generic DQN on a Gymnasium env (`steps` env steps), e.g. CartPole-v1;
- `from_store`: conservative offline DQN on the store's logged transitions
  (`steps` gradient steps), then online fine-tuning for `sim_steps` env steps in
  the simulator (skipped when 0);
- `distill`: the candidate scorer taught by the rollout planner in the simulator
  (rl/distill.py, DAgger; `distill_episodes` per round): the best dispatcher in
  benchmarks/policy_quality.py, at the price of minutes of planning;
- otherwise: online DQN in the simulator for `sim_steps` env steps.

Bad input (unknown env, unreadable params, empty store, existing output
directory) raises `TrainInputError` before any training; a diverging run raises
`TrainingDivergedError` and writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym

from dispatchloop.decisions.featurizer import DemandMap
from dispatchloop.progress import progress
from dispatchloop.replay.base import ReplayStore, StoreUnavailableError, TimeWindow
from dispatchloop.replay.engine import open_store
from dispatchloop.rl.artifacts import ModelArtifact, save_model
from dispatchloop.rl.callbacks import ProgressCallback
from dispatchloop.rl.card import CardDraft, DataWindow
from dispatchloop.rl.distill import DistillConfig, train_distilled
from dispatchloop.rl.dqn import TrainResult, train_dispatch, train_gym, train_offline
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario

logger = logging.getLogger(__name__)

DEFAULT_SIM_STEPS = 50_000
DEFAULT_GYM_STEPS = 50_000
DEFAULT_OFFLINE_STEPS = 5_000


class TrainInputError(ValueError):
    """The request cannot be trained as given (exit code 2, one sentence)."""


@dataclass(frozen=True)
class TrainRequest:
    out: Path
    env_id: str | None = None
    from_store: bool = False
    steps: int | None = None
    sim_steps: int | None = None
    params: Path | None = None
    seed: int = 0
    scenario: Literal["default", "store"] = "default"
    distill: bool = False
    distill_episodes: int | None = None
    """TRAIN episodes per DAgger round (None: DistillConfig's default)."""


def load_config(path: Path | None) -> DQNConfig:
    """Defaults, or plain params / an optimal_config.json; bad files are input errors."""
    if path is None:
        return DQNConfig()
    try:
        return DQNConfig.from_json_file(path)
    except OSError as exc:
        raise TrainInputError(f"cannot read --params {str(path)!r}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise TrainInputError(f"--params {str(path)!r} is not valid JSON: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise TrainInputError(f"--params {str(path)!r} is not a DQN configuration: {exc}") from exc


def run_training(
    settings: Settings, request: TrainRequest, show_progress: bool | None = None
) -> dict[str, Any]:
    """Train as requested, save the model directory, return a JSON-able summary."""
    if request.out.exists():
        raise TrainInputError(f"--out {str(request.out)!r} already exists; choose a new directory")
    config = load_config(request.params)
    if request.env_id is not None:
        result, meta = _train_gym(config, request, show_progress)
    else:
        result, meta = _train_dispatch(settings, config, request, show_progress)
    metrics = {
        "env_steps": float(result.env_steps),
        "gradient_steps": float(result.gradient_steps),
        "final_loss": result.final_loss,
        "wall_seconds": result.wall_seconds,
        **meta.pop("metrics", {}),
    }
    training = meta["training"]
    draft = CardDraft(
        trainer="distill" if training["mode"] == "distill" else "dqn",
        training=training,
        scenario=meta.get("scenario"),
        data_window=meta.get("data_window"),
        metrics=metrics,
    )
    artifact = save_model(request.out, result.q_network, config, draft)
    return _summary(artifact, result, meta)


def _summary(artifact: ModelArtifact, result: TrainResult, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_dir": str(artifact.directory),
        "model_id": artifact.model_id,
        "sha256": artifact.sha256,
        "onnx": str(artifact.onnx_path) if artifact.onnx_path else None,
        "mode": meta["training"]["mode"],
        "env_steps": result.env_steps,
        "gradient_steps": result.gradient_steps,
        "final_loss": result.final_loss,
        "wall_seconds": round(result.wall_seconds, 3),
    }


def _train_gym(
    config: DQNConfig, request: TrainRequest, show_progress: bool | None
) -> tuple[TrainResult, dict[str, Any]]:
    env_id = str(request.env_id)
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise TrainInputError(f"--env {env_id!r} is not a known Gymnasium env: {exc}") from exc
    steps = request.steps or DEFAULT_GYM_STEPS
    with progress(f"train {env_id}", steps, show_bar=show_progress) as bar:
        try:
            result = train_gym(config, env_id, steps, request.seed, [ProgressCallback(bar)])
        except ValueError as exc:
            raise TrainInputError(f"--env {env_id!r} cannot be trained: {exc}") from exc
    training = {"mode": "gym", "env_id": env_id, "seed": request.seed, "steps": steps}
    return result, {"training": training}


@contextmanager
def _store(settings: Settings) -> Iterator[ReplayStore]:
    try:
        store = open_store(settings.resolved_store_url, create=False)
    except StoreUnavailableError as exc:
        raise TrainInputError(str(exc).rstrip(".") + " (check DISPATCHLOOP_STORE_URL)") from exc
    try:
        yield store
    finally:
        store.close()


def _scenario(settings: Settings, request: TrainRequest) -> tuple[Scenario, TimeWindow]:
    window = TimeWindow()
    if request.scenario == "default":
        return Scenario.default(), window
    with _store(settings) as store:
        try:
            return Scenario.fit(store, window), window
        except ValueError as exc:
            raise TrainInputError(f"cannot calibrate the scenario from the store: {exc}") from exc


def _train_dispatch(
    settings: Settings, config: DQNConfig, request: TrainRequest, show_progress: bool | None
) -> tuple[TrainResult, dict[str, Any]]:
    scenario, window = _scenario(settings, request)
    meta: dict[str, Any] = {"scenario": scenario.to_dict()}
    if request.scenario == "store":
        meta["data_window"] = DataWindow(start=window.start, end=window.end)
    if request.distill:
        distilled, how = _distill(settings, config, request, scenario, show_progress)
        return distilled, {"training": how, **meta}
    training: dict[str, Any] = {"mode": "sim", "seed": request.seed, "scenario": request.scenario}
    init_from, offline = None, None
    if request.from_store:
        offline, transitions = _pretrain_offline(
            settings, config, request, show_progress, scenario.arrays.demand
        )
        meta["data_window"] = DataWindow(start=window.start, end=window.end, events=transitions)
        init_from = offline.q_network
        training.update(
            mode="offline+sim", offline_gradient_steps=offline.gradient_steps, data_window="all"
        )
    sim_steps = request.sim_steps
    if sim_steps is None:
        sim_steps = 0 if request.from_store else (request.steps or DEFAULT_SIM_STEPS)
    training["sim_steps"] = sim_steps
    if sim_steps == 0 and offline is not None:
        training["mode"] = "offline"
        result = offline
    else:
        with progress("train dispatch (sim)", sim_steps, show_bar=show_progress) as bar:
            result = train_dispatch(
                config,
                scenario,
                settings.reward,
                sim_steps,
                request.seed,
                [ProgressCallback(bar)],
                init_from=init_from,
            )
        if offline is not None:
            result = result._replace(
                gradient_steps=result.gradient_steps + offline.gradient_steps,
                wall_seconds=result.wall_seconds + offline.wall_seconds,
            )
    return result, {"training": training, **meta}


def _distill(
    settings: Settings,
    config: DQNConfig,
    request: TrainRequest,
    scenario: Scenario,
    show_progress: bool | None,
) -> tuple[TrainResult, dict[str, Any]]:
    """The scorer taught by the rollout planner; `config` gives only the network's shape."""
    distill = DistillConfig()
    if request.distill_episodes is not None:
        distill = DistillConfig(episodes_per_round=request.distill_episodes)
    decisions = distill.rounds * distill.episodes_per_round * scenario.bookings_per_episode
    with progress("train dispatch (distill)", decisions, show_bar=show_progress) as bar:
        result = train_distilled(
            config, scenario, settings.reward, distill, request.seed, [ProgressCallback(bar)]
        )
    training = {
        "mode": "distill",
        "seed": request.seed,
        "scenario": request.scenario,
        "teacher": "rollout",
        "distill": distill.to_dict(),
    }
    return result, training


def _pretrain_offline(
    settings: Settings,
    config: DQNConfig,
    request: TrainRequest,
    show_progress: bool | None,
    demand: DemandMap,
) -> tuple[TrainResult, int]:
    """Offline DQN on the store's transitions (and how many), featurized on the training
    world's demand map."""
    with _store(settings) as store:
        dataset = LoggedDataset.from_store(store, TimeWindow(), settings.reward, demand)
    if len(dataset) == 0:
        raise TrainInputError("the replay store holds no logged transitions to train on")
    logger.info(
        "offline dataset: %d transitions (%d gaps, %d too wide left out)",
        len(dataset),
        dataset.gaps,
        dataset.skipped,
    )
    steps = request.steps or DEFAULT_OFFLINE_STEPS
    with progress("train offline (logged)", steps, show_bar=show_progress) as bar:
        result = train_offline(config, dataset, steps, request.seed, [ProgressCallback(bar)])
    return result, len(dataset)
