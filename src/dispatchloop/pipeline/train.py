"""Stage `train`: one candidate from a fitted scenario, as a verified model directory.

Trainer `dqn`: conservative offline DQN on the window's logged transitions, then
online fine-tuning in the fitted simulator (either part may be switched off by a
zero budget). Trainer `distill`: the scorer taught by the rollout planner in the
fitted simulator. Either way the directory appears under its final name only
when complete (rl.artifacts.save_model stages and renames), and a stop request
raises StageStoppedError before anything is saved.

The one way a dispatch model is trained: `dispatchloop train` calls
`train_candidate` in-process (with a progress bar), the daemon calls it in a
spawned child (`train_in_child`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dispatchloop.errors import DispatchloopError, FatalError, InputError, TransientError
from dispatchloop.pipeline.child import ChildLimits, run_in_child
from dispatchloop.pipeline.common import (
    ProgressFn,
    StageProgress,
    StageStoppedError,
    StopFlag,
    no_progress,
    remove_staging,
)
from dispatchloop.pipeline.fit import ScenarioFit
from dispatchloop.replay.base import ReplayStore, StoreUnavailableError
from dispatchloop.replay.engine import open_store
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.callbacks import TrainingCallback, TrainingContext
from dispatchloop.rl.card import CardDraft, DataWindow
from dispatchloop.rl.distill import DistillConfig, train_distilled
from dispatchloop.rl.dqn import TrainingDivergedError, TrainResult, train_dispatch, train_offline
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.settings import RewardSettings

log = logging.getLogger(__name__)

Trainer = Literal["dqn", "distill"]


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides what a candidate is; picklable for the child process."""

    out: Path
    """Model directory to create; must not exist."""
    trainer: Trainer
    """dqn (offline on the store, then fine-tuned in the simulator) or distill."""
    fit: ScenarioFit
    """The scenario and window the candidate learns from."""
    reward: RewardSettings
    """The one reward function (weights) shared with serving and evaluation."""
    config: DQNConfig
    """Network and learning hyperparameters (tuned, or the defaults)."""
    offline_steps: int = 2_000
    """dqn: gradient steps on the window's logged transitions (0: none)."""
    sim_steps: int = 12_000
    """dqn: simulator steps of fine-tuning (0: none)."""
    distill_episodes: int = 200
    """distill: TRAIN episodes per DAgger round."""
    seed: int = 0
    """Training seed (the judge uses TEST seeds, never these)."""


@dataclass(frozen=True)
class TrainedModel:
    """A complete, verified candidate directory and how it was made."""

    model_dir: Path
    """The model directory (weights, metadata, verified ONNX)."""
    model_id: str
    """Unique id written into the metadata."""
    sha256: str
    """sha256 of the weights file."""
    trainer: Trainer
    """Which trainer made it."""
    mode: str
    """What it actually did: offline, sim, offline+sim (trainer dqn) or distill."""
    final_loss: float
    """Training loss at the end (NaN if the trainer had none)."""
    env_steps: int
    """Simulator steps taken."""
    gradient_steps: int
    """Gradient updates made."""
    wall_seconds: float
    """Training time, saving excluded."""


def train_candidate(
    spec: TrainSpec,
    store: ReplayStore | None,
    stop: StopFlag,
    progress: ProgressFn = no_progress,
) -> TrainedModel:
    """Train per `spec` and save; InputError for bad requests, FatalError if training diverges.

    `store` is read only by the dqn trainer's offline part (None: no offline part is
    possible, a request for one is an InputError)."""
    if spec.out.exists():
        raise InputError(f"model directory {str(spec.out)!r} already exists; choose a new one")
    try:
        if spec.trainer == "distill":
            run = _distill(spec, stop, progress)
        else:
            run = _dqn(spec, store, stop, progress)
    except TrainingDivergedError as exc:
        raise FatalError(f"training diverged: {exc}") from exc
    if stop.is_set():  # stopped between the last step and here: still save nothing
        raise StageStoppedError("training stopped on request before saving")
    result = run.result
    artifact = save_model(spec.out, result.q_network, spec.config, _card_draft(spec, run))
    return TrainedModel(
        model_dir=artifact.directory,
        model_id=artifact.model_id,
        sha256=artifact.sha256,
        trainer=spec.trainer,
        mode=str(run.training["mode"]),
        final_loss=result.final_loss,
        env_steps=result.env_steps,
        gradient_steps=result.gradient_steps,
        wall_seconds=result.wall_seconds,
    )


@dataclass(frozen=True)
class _Run:
    """A finished training run and what the card says about how it went."""

    result: TrainResult
    training: dict[str, Any]
    transitions: int = 0
    """Logged transitions the offline part learned from."""


def _dqn(spec: TrainSpec, store: ReplayStore | None, stop: StopFlag, progress: ProgressFn) -> _Run:
    offline, transitions = _offline(spec, store, stop, progress)
    training: dict[str, Any] = {
        "mode": "offline" if spec.sim_steps == 0 else "offline+sim" if offline else "sim",
        "seed": spec.seed,
        "offline_steps": spec.offline_steps,
        "sim_steps": spec.sim_steps,
    }
    if offline is not None:
        training["offline_gradient_steps"] = offline.gradient_steps
    if spec.sim_steps == 0:
        if offline is None:
            raise InputError("nothing to train: offline_steps and sim_steps give no work")
        return _Run(offline, training, transitions)
    callback = StopAndReport(stop, progress, "train.sim", spec.sim_steps)
    result = train_dispatch(
        spec.config,
        spec.fit.scenario,
        spec.reward,
        spec.sim_steps,
        spec.seed,
        [callback],
        init_from=offline.q_network if offline is not None else None,
    )
    if offline is not None:
        result = result._replace(
            gradient_steps=result.gradient_steps + offline.gradient_steps,
            wall_seconds=result.wall_seconds + offline.wall_seconds,
        )
    return _Run(result, training, transitions)


def _offline(
    spec: TrainSpec, store: ReplayStore | None, stop: StopFlag, progress: ProgressFn
) -> tuple[TrainResult | None, int]:
    """Conservative offline DQN on the window's logged transitions (None: no offline part).

    An empty window is fine when the simulator trains anyway, and an input error when
    the offline part is all there is."""
    if spec.offline_steps == 0:
        return None, 0
    if store is None:
        raise InputError("offline training needs the replay store, and none was given")
    demand = spec.fit.scenario.arrays.demand
    try:
        dataset = LoggedDataset.from_store(store, spec.fit.window, spec.reward, demand)
    except StoreUnavailableError as exc:
        raise TransientError(f"cannot read logged transitions: {exc}") from exc
    if len(dataset) == 0:
        if spec.sim_steps == 0:
            raise InputError("the replay store holds no logged transitions to train on")
        log.warning("no logged transitions in the window; training in the simulator only")
        return None, 0
    log.info(
        "offline dataset: %d transitions (%d gaps, %d too wide left out)",
        len(dataset),
        dataset.gaps,
        dataset.skipped,
    )
    callback = StopAndReport(stop, progress, "train.offline", spec.offline_steps)
    result = train_offline(spec.config, dataset, spec.offline_steps, spec.seed, [callback])
    return result, len(dataset)


def _distill(spec: TrainSpec, stop: StopFlag, progress: ProgressFn) -> _Run:
    """The scorer taught by the rollout planner; `spec.config` gives only the network's shape."""
    distill = DistillConfig(episodes_per_round=spec.distill_episodes)
    scenario = spec.fit.scenario
    total = distill.rounds * distill.episodes_per_round * scenario.bookings_per_episode
    callback = StopAndReport(stop, progress, "train.distill", total)
    result = train_distilled(spec.config, scenario, spec.reward, distill, spec.seed, [callback])
    training = {
        "mode": "distill",
        "seed": spec.seed,
        "teacher": "rollout",
        "distill": distill.to_dict(),
    }
    return _Run(result, training)


def _card_draft(spec: TrainSpec, run: _Run) -> CardDraft:
    """What this run knows about the candidate; save_model completes it into its card.

    The data window is named only when data was used: the world was fitted on it
    (fit.events), or the offline part learned from it."""
    window, result = spec.fit.window, run.result
    events = spec.fit.events or run.transitions
    return CardDraft(
        trainer=spec.trainer,
        scenario=spec.fit.scenario.to_dict(),
        data_window=DataWindow(start=window.start, end=window.end, events=events)
        if events
        else None,
        training=run.training,
        metrics={
            "env_steps": float(result.env_steps),
            "gradient_steps": float(result.gradient_steps),
            "final_loss": result.final_loss,
            "wall_seconds": result.wall_seconds,
        },
    )


class StopAndReport(TrainingCallback):
    """Raises StageStoppedError at the next step once `stop` is set; reports progress.

    Raising (rather than returning False) also stops loops that ignore the return
    value, such as distillation, and guarantees nothing is saved afterwards.
    """

    def __init__(
        self, stop: StopFlag, progress: ProgressFn, stage: str, total: float, every_s: float = 1.0
    ) -> None:
        self._stop = stop
        self._progress = progress
        self._stage = stage
        self._total = total
        self._every_s = every_s
        self._last = 0.0

    def on_step(self, ctx: TrainingContext) -> bool:
        if self._stop.is_set():
            raise StageStoppedError(f"{self._stage} stopped at step {ctx.steps} on request")
        now = time.monotonic()
        if now - self._last >= self._every_s:
            self._last = now
            self._progress(StageProgress(self._stage, ctx.steps, self._total, ctx.last_loss))
        return True


@dataclass(frozen=True)
class _ChildTrain:
    spec: TrainSpec
    store_url: str


def _train_target(job: _ChildTrain, stop: StopFlag, progress: ProgressFn) -> TrainedModel:
    try:
        store = open_store(job.store_url, create=False)
    except StoreUnavailableError as exc:
        raise TransientError(f"the training child cannot open the store: {exc}") from exc
    try:
        return train_candidate(job.spec, store, stop, progress)
    finally:
        store.close()


def train_in_child(
    spec: TrainSpec,
    store_url: str,
    stop: StopFlag,
    limits: ChildLimits,
    progress: ProgressFn = no_progress,
) -> TrainedModel:
    """`train_candidate` in a spawned child (see pipeline.child); cleans up after a kill."""
    try:
        return run_in_child(
            _train_target,
            _ChildTrain(spec, store_url),
            limits=limits,
            stop=stop,
            progress=progress,
            name="train",
        )
    except DispatchloopError:
        remove_staging(spec.out)
        raise
