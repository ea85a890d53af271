"""`dispatchloop train --env`: generic DQN on a Gymnasium env, to a verified model directory.

A check of the learner itself on a known problem (e.g. CartPole-v1), outside the
dispatch world. Dispatch models are trained by the loop's stage
(`pipeline.train.train_candidate`), which the CLI calls too.

Bad input (unknown env, existing output directory) raises `TrainInputError`
before any training; a diverging run raises `TrainingDivergedError` and writes
nothing.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym

from dispatchloop.progress import progress
from dispatchloop.rl.artifacts import ModelArtifact, save_model
from dispatchloop.rl.callbacks import ProgressCallback
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.dqn import TrainResult, train_gym
from dispatchloop.rl.hyperparams import DQNConfig


class TrainInputError(ValueError):
    """The request cannot be trained as given (exit code 2, one sentence)."""


def train_gym_model(
    config: DQNConfig,
    env_id: str,
    steps: int,
    *,
    seed: int,
    out: Path,
    show_progress: bool | None = None,
) -> tuple[ModelArtifact, TrainResult]:
    """Train DQN on `env_id` for `steps` env steps and save the model directory."""
    if out.exists():
        raise TrainInputError(f"--out {str(out)!r} already exists; choose a new directory")
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise TrainInputError(f"--env {env_id!r} is not a known Gymnasium env: {exc}") from exc
    with progress(f"train {env_id}", steps, show_bar=show_progress) as bar:
        try:
            result = train_gym(config, env_id, steps, seed, [ProgressCallback(bar)])
        except ValueError as exc:
            raise TrainInputError(f"--env {env_id!r} cannot be trained: {exc}") from exc
    draft = CardDraft(
        trainer="dqn",
        training={"mode": "gym", "env_id": env_id, "seed": seed, "steps": steps},
        metrics={
            "env_steps": float(result.env_steps),
            "gradient_steps": float(result.gradient_steps),
            "final_loss": result.final_loss,
            "wall_seconds": result.wall_seconds,
        },
    )
    return save_model(out, result.q_network, config, draft), result
