"""`dispatchloop demo`: the closed loop on one machine (`pip install 'dispatchloop[demo]'`).

Options left out take `DemoOptions`' defaults (the one place they are set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of

EXIT_INTERRUPTED = 130


@app.command("demo")
def demo(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    cycles: Annotated[int | None, typer.Option(help="Stop after N finished cycles [3].")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this long [15].")] = None,
    seed: Annotated[int, typer.Option(help="The world and the event stream.")] = 0,
    rate: Annotated[float | None, typer.Option(help="Decisions per second [100].")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Serving's exploration [0.1].")] = None,
    trainer: Annotated[
        str | None, typer.Option(help="loop.trainer of the demo's daemon [distill] or dqn.")
    ] = None,
    new_events: Annotated[
        int | None, typer.Option(help="A cycle every N new events (loop.new_events) [4000].")
    ] = None,
    min_events: Annotated[
        int | None, typer.Option(help="loop.min_events (default: the setting).")
    ] = None,
    gap_episodes: Annotated[
        int | None, typer.Option(help="Simulator episodes for greedy/hindsight levels [300].")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option(help="Empty or new directory for store, models, logs, plot.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """The closed loop: embedded broker, `run` and `simulate --follow` from greedy with
    exploration; a live view, then a verdict and a plot of realised reward per decision.

    SIGTERM or Ctrl-C stops both children (SIGTERM) and the broker before exiting."""
    import signal  # noqa: PLC0415

    from dispatchloop.demo import DemoOptions, run_demo  # noqa: PLC0415
    from dispatchloop.demo.broker import BrokerMissingError, BrokerStartError  # noqa: PLC0415
    from dispatchloop.demo.loop import DemoFailedError, DemoInputError  # noqa: PLC0415
    from dispatchloop.demo.view import LoopView  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    if trainer not in (None, "distill", "dqn"):
        raise fail_config(f"--trainer must be distill or dqn, got {trainer!r}.")
    given: dict[str, Any] = {
        "cycles": cycles, "max_minutes": max_minutes, "seed": seed, "rate": rate,
        "epsilon": epsilon, "trainer": trainer, "new_events": new_events,
        "min_events": min_events, "gap_episodes": gap_episodes,
    }  # fmt: skip
    # The entry point owns signals: SIGTERM unwinds like Ctrl-C, so the children are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        options = DemoOptions(**{key: value for key, value in given.items() if value is not None})
        result = run_demo(settings, options, workdir, LoopView())
    except (DemoInputError, BrokerMissingError) as exc:
        raise fail_config(f"{str(exc).rstrip('.')}.") from None
    except (BrokerStartError, DemoFailedError) as exc:
        typer.echo(f"dispatchloop: demo failed: {str(exc).rstrip('.')}.", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        typer.echo("dispatchloop: demo interrupted; its children and broker are stopped.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
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
