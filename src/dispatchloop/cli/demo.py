"""`dispatchloop demo`: the closed loop on one machine (`pip install 'dispatchloop[demo]'`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of


@app.command("demo")
def demo(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    cycles: Annotated[int, typer.Option(help="Stop after this many finished cycles.")] = 3,
    max_minutes: Annotated[float, typer.Option(help="Stop after this long anyway.")] = 15.0,
    seed: Annotated[int, typer.Option(help="The world and the event stream.")] = 0,
    rate: Annotated[
        float, typer.Option(help="Decisions per second of the dispatch system.")
    ] = 40.0,
    epsilon: Annotated[float, typer.Option(help="Serving's exploration.")] = 0.1,
    new_events: Annotated[
        int, typer.Option(help="A cycle starts every this many new events (loop.new_events).")
    ] = 4_000,
    min_events: Annotated[
        int | None, typer.Option(help="loop.min_events (default: the setting).")
    ] = None,
    gap_episodes: Annotated[
        int, typer.Option(min=2, help="Paired simulator episodes for greedy's/hindsight's levels.")
    ] = 300,
    workdir: Annotated[
        Path | None, typer.Option(help="Empty or new directory for store, models, logs, plot.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The closed loop: embedded broker, `run` and `simulate --follow` from greedy with
    exploration; a live view, then a verdict and a plot of realised reward per decision."""
    from dispatchloop.demo import DemoOptions, run_demo  # noqa: PLC0415
    from dispatchloop.demo.broker import BrokerMissingError, BrokerStartError  # noqa: PLC0415
    from dispatchloop.demo.loop import DemoFailedError, DemoInputError  # noqa: PLC0415
    from dispatchloop.demo.view import LoopView  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        options = DemoOptions(
            cycles=cycles, max_minutes=max_minutes, seed=seed, rate=rate, epsilon=epsilon,
            new_events=new_events, min_events=min_events, gap_episodes=gap_episodes,
        )  # fmt: skip
        result = run_demo(settings, options, workdir, LoopView(quiet=False))
    except (DemoInputError, BrokerMissingError) as exc:
        raise fail_config(f"{str(exc).rstrip('.')}.") from None
    except (BrokerStartError, DemoFailedError) as exc:
        typer.echo(f"dispatchloop: demo failed: {str(exc).rstrip('.')}.", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    figures = result.figures.to_json() | {"seed": seed, "plot": str(result.plot)}
    if as_json:
        typer.echo(json.dumps(figures))
        typer.echo(result.verdict, err=True)
    else:
        typer.echo(result.verdict)
        typer.echo(f"plot: {result.plot}")
    if any(code != 0 for code in figures["exit_codes"].values()):
        typer.echo(f"dispatchloop: a child did not stop cleanly: {figures['exit_codes']}", err=True)
        raise typer.Exit(EXIT_FAILURE)
