"""Training hooks, small and composable like Stable-Baselines3 callbacks.

The training loops in rl/dqn.py call `on_training_start`, then `on_step` after
every vector step (online) or gradient step (offline) — returning False stops
training early — and finally `on_training_end`. Evaluation for pruning,
checkpoints, graceful shutdown and progress bars are all callbacks, so the
algorithm itself stays free of them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatchloop.progress import Progress
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import QNetwork
from dispatchloop.rl.policy import DQNPolicy

logger = logging.getLogger(__name__)


@dataclass
class TrainingContext:
    """What callbacks may look at; the loop updates it in place."""

    config: DQNConfig
    q_network: QNetwork
    total_steps: int
    online: bool
    env_steps: int = 0
    gradient_steps: int = 0
    last_loss: float = float("nan")
    episodes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Progress counter: env steps when training online, gradient steps offline."""
        return self.env_steps if self.online else self.gradient_steps

    def policy(self) -> DQNPolicy:
        """The greedy policy of the current network (shares its weights; do not train it)."""
        return DQNPolicy(self.q_network)


class TrainingCallback:
    """Base class: override what you need; `on_step` returning False stops training."""

    def on_training_start(self, ctx: TrainingContext) -> None:
        """Called once before the first step."""

    def on_step(self, ctx: TrainingContext) -> bool:
        """Called after every step; return False to stop early."""
        return True

    def on_training_end(self, ctx: TrainingContext) -> None:
        """Called once after the last step, also after an early stop."""


class _EveryN(TrainingCallback):
    """Fires `_fire` each time `ctx.steps` crosses a multiple of every_steps."""

    def __init__(self, every_steps: int) -> None:
        if every_steps < 1:
            raise ValueError("every_steps must be at least 1")
        self.every_steps = every_steps
        self._next = every_steps

    def on_training_start(self, ctx: TrainingContext) -> None:
        self._next = (ctx.steps // self.every_steps + 1) * self.every_steps

    def on_step(self, ctx: TrainingContext) -> bool:
        if ctx.steps < self._next:
            return True
        self._next = (ctx.steps // self.every_steps + 1) * self.every_steps
        return self._fire(ctx)

    def _fire(self, ctx: TrainingContext) -> bool:
        raise NotImplementedError


class EvalCallback(_EveryN):
    """Every N steps: score the greedy policy with `evaluate`, hand the score to `on_result`.

    `on_result(steps, score)` returning False stops training; the tuner uses it
    to report to Optuna and prune. `results` keeps every (steps, score).
    """

    def __init__(
        self,
        evaluate: Callable[[DQNPolicy], float],
        every_steps: int,
        on_result: Callable[[int, float], bool] = lambda steps, score: True,
    ) -> None:
        super().__init__(every_steps)
        self._evaluate = evaluate
        self._on_result = on_result
        self.results: list[tuple[int, float]] = []

    def _fire(self, ctx: TrainingContext) -> bool:
        was_training = ctx.q_network.training
        ctx.q_network.eval()
        try:
            score = float(self._evaluate(ctx.policy()))
        finally:
            ctx.q_network.train(was_training)
        self.results.append((ctx.steps, score))
        logger.info("evaluation at %d steps: %.4g", ctx.steps, score)
        return self._on_result(ctx.steps, score)


class CheckpointCallback(_EveryN):
    """Every N steps, save the network to `directory/step-<N>` (safetensors, no ONNX)."""

    def __init__(self, directory: Path, every_steps: int) -> None:
        super().__init__(every_steps)
        self.directory = directory
        self.saved: list[Path] = []

    def _fire(self, ctx: TrainingContext) -> bool:
        target = self.directory / f"step-{ctx.steps:09d}"
        if target.exists():  # resumed run at the same step: the checkpoint is already there
            return True
        save_model(
            target,
            ctx.q_network,
            ctx.config,
            CardDraft(
                training={
                    "mode": "checkpoint",
                    "checkpoint": {
                        "env_steps": ctx.env_steps,
                        "gradient_steps": ctx.gradient_steps,
                    },
                }
            ),
            export_onnx=False,
        )
        self.saved.append(target)
        return True


class StopOnSignalCallback(TrainingCallback):
    """Stops training at the next step once `event` is set (SIGTERM handler, daemon shutdown)."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_step(self, ctx: TrainingContext) -> bool:
        return not self._event.is_set()


class ProgressCallback(TrainingCallback):
    """Advances a `dispatchloop.progress` bar/log with steps and the latest loss."""

    def __init__(self, progress: Progress, update_every: int = 256) -> None:
        self._progress = progress
        self._update_every = update_every
        self._reported = 0

    def on_step(self, ctx: TrainingContext) -> bool:
        if ctx.steps - self._reported >= self._update_every:
            self._report(ctx)
        return True

    def on_training_end(self, ctx: TrainingContext) -> None:
        self._report(ctx)

    def _report(self, ctx: TrainingContext) -> None:
        self._progress.update(
            ctx.steps - self._reported, loss=ctx.last_loss, grad_steps=ctx.gradient_steps
        )
        self._reported = ctx.steps
