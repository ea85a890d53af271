"""`dispatchloop train`: a verified model directory from the simulator, the store or a Gym env."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of


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
            help="Env steps in the simulator (default 50000; 0 with --from-store).",
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", help="Train on a Gymnasium env id instead (e.g. CartPole-v1)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=1, help="Gradient steps with --from-store, env steps with --env."
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
            "--distill-episodes", min=1, help="Episodes per DAgger round with --distill (1000)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a DQN and write a verified model directory (safetensors, metadata, ONNX)."""
    from dispatchloop.logs import configure_logging  # noqa: PLC0415 - keep `--help` fast
    from dispatchloop.rl.dqn import TrainingDivergedError  # noqa: PLC0415
    from dispatchloop.rl.run import TrainInputError, TrainRequest, run_training  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
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
    request = TrainRequest(
        out=out,
        env_id=env,
        from_store=from_store,
        steps=steps,
        sim_steps=sim_steps,
        params=params,
        seed=seed,
        scenario="store" if scenario == "store" else "default",
        distill=distill,
        distill_episodes=distill_episodes,
    )
    try:
        summary = run_training(settings, request)
    except TrainInputError as exc:
        raise fail_config(f"{exc}.") from None
    except TrainingDivergedError as exc:
        typer.echo(f"dispatchloop: training failed, no model written: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"model {summary['model_id']} written to {summary['model_dir']} "
            f"({summary['env_steps']} env steps, {summary['gradient_steps']} gradient steps, "
            f"final loss {summary['final_loss']:.4g}, {summary['wall_seconds']:.1f} s)"
        )
