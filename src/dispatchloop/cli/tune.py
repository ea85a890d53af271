"""`dispatchloop tune` and `compare`: hyperparameter search and paired configuration comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dispatchloop.cli.app import app, fail_config, fail_store, settings_of


@app.command("tune")
def tune(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    trials: Annotated[
        int | None, typer.Option(help="Total trials for the study, across all workers.")
    ] = 50,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna RDB URL; default sqlite:///<data_dir>/tuning.db."),
    ] = None,
    study: Annotated[str, typer.Option(help="Study name; workers with one name share it.")] = (
        "dispatch-dqn"
    ),
    scenario: Annotated[str, typer.Option(help="default, or store (fitted to events).")] = (
        "default"
    ),
    output: Annotated[
        Path | None, typer.Option(help="optimal_config.json; default under data_dir.")
    ] = None,
    steps_per_trial: Annotated[int, typer.Option(help="Env steps of training per trial.")] = 20_000,
    validation_episodes: Annotated[int, typer.Option(help="Validation episodes per score.")] = 20,
    evaluations: Annotated[int, typer.Option(help="Scores reported per trial (pruning).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of sampler and training.")] = 0,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none.")] = "median",
    heartbeat: Annotated[
        int, typer.Option(help="Heartbeat seconds; a dead worker's trial reruns after 2x.")
    ] = 30,
    warm_start: Annotated[
        Path | None, typer.Option(help="Params or optimal_config.json to try first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Tune DQN hyperparameters with Optuna (TPE + pruning) on validation episodes."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.simulated import load_scenario  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415
    from dispatchloop.tuning import command  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        world, _label = load_scenario(
            command.scenario_source(scenario), settings.resolved_store_url
        )
        result = command.run_tune(
            settings,
            world,
            trials=trials,
            timeout_s=timeout,
            storage=storage,
            study=study,
            output=output,
            steps_per_trial=steps_per_trial,
            validation_episodes=validation_episodes,
            evaluations=evaluations,
            seed=seed,
            pruner=pruner,
            heartbeat_s=heartbeat,
            warm_start=warm_start,
        )
    except (command.TuneInputError, EvaluationInputError) as exc:
        raise fail_config(f"{exc}.") from None
    except StoreUnavailableError as exc:
        raise fail_store(exc) from None
    typer.echo(json.dumps(command.result_json(result)) if as_json else command.summary(result))


@app.command("compare")
def compare(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    baseline: Annotated[Path, typer.Option(help="Params JSON or model directory.")],
    candidate: Annotated[Path, typer.Option(help="Params JSON or model directory.")],
    episodes: Annotated[int, typer.Option(help="Paired TEST episodes.")] = 100,
    seeds: Annotated[int, typer.Option(help="Training runs per params file.")] = 1,
    steps: Annotated[int, typer.Option(help="Env steps per training run.")] = 20_000,
    scenario: Annotated[str, typer.Option(help="default, or store.")] = "default",
    seed: Annotated[int, typer.Option(help="First test seed offset / training seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Candidate vs baseline configuration on the same TEST seeds, with a paired 99 % CI."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.report import render_table  # noqa: PLC0415
    from dispatchloop.evaluation.simulated import load_scenario  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415
    from dispatchloop.tuning import command  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    request = command.CompareRequest(baseline, candidate, episodes, seeds, steps, seed)
    try:
        world, _label = load_scenario(
            command.scenario_source(scenario), settings.resolved_store_url
        )
        result = command.compare(request, world, settings.reward)
    except (command.CompareInputError, EvaluationInputError) as exc:
        raise fail_config(f"{exc}.") from None
    except StoreUnavailableError as exc:
        raise fail_store(exc) from None
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else render_table(result.report))
