"""`dispatchloop simulate`: the simulator as a dispatch system producing events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of

if TYPE_CHECKING:
    from dispatchloop.sim.policies import LoggingPolicy


@app.command("simulate")
def simulate(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    events: Annotated[int, typer.Option("--events", min=1, help="Events to produce.")] = 1_000,
    rate: Annotated[
        float, typer.Option("--rate", min=0.0, help="Events per second; 0 = as fast as possible.")
    ] = 0.0,
    policy: Annotated[
        str,
        typer.Option(
            help="Dispatcher: greedy, random, hindsight, rollout, or a trained model directory."
        ),
    ] = "greedy",
    epsilon: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Chance of a uniformly random eligible driver."),
    ] = 0.0,
    seed: Annotated[
        int | None, typer.Option(help="Seed (default: random); the same seed, the same events.")
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario JSON file (default: the built-in scenario).")
    ] = None,
    company_id: Annotated[str, typer.Option(help="company_id of the events.")] = "sim",
    start: Annotated[
        str | None,
        typer.Option(help="UTC day of the first episode, YYYY-MM-DD (default: 2026-01-01)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Act as a dispatch system: simulate decisions and produce their outcome events to Kafka."""
    import secrets  # noqa: PLC0415 - keep `--help` fast
    from datetime import UTC, datetime  # noqa: PLC0415

    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.sim.producer import (  # noqa: PLC0415
        DEFAULT_START,
        ProduceError,
        SimulateInputError,
        simulate_to_kafka,
    )

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        first_day = DEFAULT_START if start is None else datetime.strptime(start, "%Y-%m-%d")
    except ValueError:
        raise fail_config(f"--start {start!r} is not a date like 2026-11-23.") from None
    if seed is None:
        seed = secrets.randbits(31)  # reported in the summary, so the run can be repeated
    try:
        summary = simulate_to_kafka(
            settings,
            n_events=events,
            rate=rate,
            policy=policy,
            epsilon=epsilon,
            seed=seed,
            scenario_path=scenario,
            company_id=company_id,
            start=first_day.replace(tzinfo=UTC),
            load_model_policy=_load_model_policy,
        )
    except SimulateInputError as exc:
        raise fail_config(f"{exc}.") from None
    except ProduceError as exc:
        typer.echo(f"dispatchloop: simulate failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"produced {summary['events']} events to {summary['topic']} "
            f"({summary['policy']}, seed {seed}) in {summary['seconds']} s"
        )


def _load_model_policy(directory: Path) -> LoggingPolicy:
    """`simulate --policy DIR`; imported on use, since `rl` pulls torch."""
    from dispatchloop.rl.policy import load_logging_policy  # noqa: PLC0415

    return load_logging_policy(directory)
