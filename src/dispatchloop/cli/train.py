"""`dispatchloop train`: a verified model directory, trained by the loop's own stage.

Dispatch models go through `pipeline.train.train_candidate`, the function the
daemon runs in its training child: the same trainer, card and checks whether an
engineer trains by hand or `run` retrains. `--env` trains the generic learner on a
Gymnasium env instead (`rl.run`).
"""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, fail_store, settings_of

if TYPE_CHECKING:
    from dispatchloop.pipeline.common import StageProgress
    from dispatchloop.progress import Progress
    from dispatchloop.rl.hyperparams import DQNConfig
    from dispatchloop.settings import Settings


@app.command("train")
def train(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="New model directory to write.")],
    from_store: Annotated[
        bool, typer.Option("--from-store", help="Pre-train offline on the store's logged data.")
    ] = False,
    sim_steps: Annotated[
        int | None,
        typer.Option(
            "--sim-steps",
            min=0,
            help="Env steps in the simulator (default loop.sim_steps; 0 with --from-store).",
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", help="Train on a Gymnasium env id instead (e.g. CartPole-v1)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Gradient steps with --from-store (default loop.offline_steps), "
            "env steps otherwise.",
        ),
    ] = None,
    params: Annotated[
        Path | None, typer.Option("--params", help="DQN params JSON or an optimal_config.json.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of networks, exploration and episodes.")] = 0,
    scenario: Annotated[
        str, typer.Option(help="default, or store (calibrated from stored events).")
    ] = "default",
    distill: Annotated[
        bool,
        typer.Option(
            "--distill",
            help="Teach the scorer to choose as the rollout planner does (DAgger) "
            "instead of Q-learning: a better dispatcher, minutes of planning to train.",
        ),
    ] = False,
    distill_episodes: Annotated[
        int | None,
        typer.Option(
            "--distill-episodes",
            min=1,
            help="Episodes per DAgger round with --distill (default loop.distill_episodes).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a dispatch model (or a Gym DQN) and write a verified model directory."""
    from dispatchloop.logs import configure_logging  # noqa: PLC0415 - keep `--help` fast

    settings = settings_of(ctx)
    configure_logging(settings)
    _check_options(scenario, env, from_store, distill, distill_episodes, sim_steps, steps)
    config = _load_config(params)
    if env is not None:
        summary = _train_gym(config, env, steps, seed, out)
    else:
        offline = (steps or settings.loop.offline_steps) if from_store else 0
        sim = sim_steps if sim_steps is not None else 0 if from_store else None
        budget = _Budget(
            offline_steps=offline,
            sim_steps=sim if sim is not None else (steps or settings.loop.sim_steps),
            distill_episodes=distill_episodes or settings.loop.distill_episodes,
        )
        summary = _train_dispatch(settings, config, out, budget, seed, scenario, distill)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"model {summary['model_id']} written to {summary['model_dir']} "
            f"({summary['env_steps']} env steps, {summary['gradient_steps']} gradient steps, "
            f"final loss {summary['final_loss']:.4g}, {summary['wall_seconds']:.1f} s)"
        )


def _check_options(  # noqa: PLR0917 - the options to cross-check
    scenario: str,
    env: str | None,
    from_store: bool,
    distill: bool,
    distill_episodes: int | None,
    sim_steps: int | None,
    steps: int | None,
) -> None:
    if scenario not in ("default", "store"):
        raise fail_config(f"--scenario must be default or store, not {scenario!r}.")
    if env is not None and from_store:
        raise fail_config("--env and --from-store cannot be combined.")
    if distill and (env is not None or from_store or sim_steps is not None or steps is not None):
        raise fail_config(
            "--distill trains in the simulator by its own budget (--distill-episodes); "
            "it takes none of --env, --from-store, --sim-steps or --steps."
        )
    if distill_episodes is not None and not distill:
        raise fail_config("--distill-episodes needs --distill.")


def _load_config(path: Path | None) -> DQNConfig:
    """Defaults, or plain params / an optimal_config.json; bad files are input errors."""
    from dispatchloop.rl.hyperparams import DQNConfig  # noqa: PLC0415

    if path is None:
        return DQNConfig()
    try:
        return DQNConfig.from_json_file(path)
    except OSError as exc:
        raise fail_config(f"cannot read --params {str(path)!r}: {exc.strerror}.") from None
    except json.JSONDecodeError as exc:
        raise fail_config(f"--params {str(path)!r} is not valid JSON: {exc}.") from None
    except (ValueError, TypeError) as exc:
        raise fail_config(f"--params {str(path)!r} is not a DQN configuration: {exc}.") from None


def _train_gym(
    config: DQNConfig, env: str, steps: int | None, seed: int, out: Path
) -> dict[str, Any]:
    from dispatchloop.rl.dqn import TrainingDivergedError  # noqa: PLC0415
    from dispatchloop.rl.run import TrainInputError, train_gym_model  # noqa: PLC0415

    try:
        artifact, result = train_gym_model(config, env, steps or 50_000, seed=seed, out=out)
    except TrainInputError as exc:
        raise fail_config(f"{exc}.") from None
    except TrainingDivergedError as exc:
        raise _failed(f"training diverged: {exc}") from None
    return {
        "model_dir": str(artifact.directory),
        "model_id": artifact.model_id,
        "sha256": artifact.sha256,
        "onnx": str(artifact.onnx_path) if artifact.onnx_path else None,
        "mode": "gym",
        "env_steps": result.env_steps,
        "gradient_steps": result.gradient_steps,
        "final_loss": result.final_loss,
        "wall_seconds": round(result.wall_seconds, 3),
    }


@dataclass(frozen=True)
class _Budget:
    """The dispatch trainer's budgets after the CLI's defaults (from settings.loop)."""

    offline_steps: int
    """Gradient steps on the store's logged transitions (0: no offline part)."""
    sim_steps: int
    """Simulator steps (0: none)."""
    distill_episodes: int
    """Episodes per DAgger round (distill only)."""


def _train_dispatch(  # noqa: PLR0917 - one request, spelled out by the CLI
    settings: Settings,
    config: DQNConfig,
    out: Path,
    budget: _Budget,
    seed: int,
    scenario: str,
    distill: bool,
) -> dict[str, Any]:
    from dispatchloop.errors import DispatchloopError, InputError  # noqa: PLC0415
    from dispatchloop.pipeline.fit import NotEnoughDataError, ScenarioFit, fit_scenario  # noqa: PLC0415
    from dispatchloop.pipeline.train import TrainSpec, train_candidate  # noqa: PLC0415
    from dispatchloop.replay import TimeWindow, open_store  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415
    from dispatchloop.sim.scenario import Scenario  # noqa: PLC0415

    with ExitStack() as stack:
        store = None
        if scenario == "store" or budget.offline_steps > 0:
            try:
                store = open_store(settings.resolved_store_url, create=False)
            except StoreUnavailableError as exc:
                raise fail_store(exc) from None
            stack.callback(store.close)
        try:
            if scenario == "store" and store is not None:
                fit = fit_scenario(store, TimeWindow())
            else:
                fit = ScenarioFit.of(Scenario.default())
            spec = TrainSpec(
                out=out,
                trainer="distill" if distill else "dqn",
                fit=fit,
                reward=settings.reward,
                config=config,
                offline_steps=budget.offline_steps,
                sim_steps=budget.sim_steps,
                distill_episodes=budget.distill_episodes,
                seed=seed,
            )
            bars = _StageBars(stack)
            model = train_candidate(spec, store, threading.Event(), bars)
            bars.finish()
        except NotEnoughDataError as exc:
            raise fail_config(f"cannot calibrate the scenario from the store: {exc}.") from None
        except InputError as exc:
            raise fail_config(f"{str(exc).rstrip('.')}.") from None
        except DispatchloopError as exc:
            raise _failed(str(exc)) from None
    return {
        "model_dir": str(model.model_dir),
        "model_id": model.model_id,
        "sha256": model.sha256,
        "onnx": str(model.model_dir / "model.onnx")
        if (model.model_dir / "model.onnx").is_file()
        else None,
        "mode": model.mode,
        "trainer": model.trainer,
        "env_steps": model.env_steps,
        "gradient_steps": model.gradient_steps,
        "final_loss": model.final_loss,
        "wall_seconds": round(model.wall_seconds, 3),
    }


class _StageBars:
    """A `pipeline` progress reporter drawn as one bar (or log line) per stage."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._bars: dict[str, Progress] = {}
        self._totals: dict[str, float | None] = {}

    def __call__(self, report: StageProgress) -> None:
        from dispatchloop.progress import progress  # noqa: PLC0415

        bar = self._bars.get(report.stage)
        if bar is None:
            bar = self._stack.enter_context(progress(report.stage, report.total))
            self._bars[report.stage] = bar
        fields = {} if report.loss is None else {"loss": report.loss}
        bar.update(max(0.0, report.done - bar.done), **fields)
        self._totals[report.stage] = report.total

    def finish(self) -> None:
        """Fill each bar to its total: reports come at most once a second, not at the end."""
        for stage, bar in self._bars.items():
            total = self._totals.get(stage)
            if total is not None:
                bar.update(max(0.0, total - bar.done))


def _failed(message: str) -> typer.Exit:
    typer.echo(f"dispatchloop: training failed, no model written: {message}", err=True)
    return typer.Exit(EXIT_FAILURE)
