"""`dispatchloop demo`: the whole loop on one machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of


@app.command("demo")
def demo(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="Logged decisions to simulate and ingest.")] = 3_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Empty or new directory for store, model, broker log.")
    ] = None,
    episodes: Annotated[int, typer.Option(help="Paired TEST episodes in the final A/B.")] = 100,
    offline_steps: Annotated[int, typer.Option(help="Offline gradient steps.")] = 2_000,
    finetune_steps: Annotated[int, typer.Option(help="Simulator steps of fine-tuning.")] = 12_000,
    seed: Annotated[int, typer.Option(help="Seed of simulation, training and evaluation.")] = 0,
) -> None:
    """Everything on one machine: local broker → simulate → ingest → train → evaluate."""
    from dispatchloop.demo import (  # noqa: PLC0415
        DemoFailedError,
        DemoInputError,
        DemoOptions,
        run_demo,
        verdict,
    )
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.testing.broker import BrokerStartError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        options = DemoOptions(
            events=events,
            episodes=episodes,
            offline_steps=offline_steps,
            finetune_steps=finetune_steps,
            seed=seed,
        )
        summary = run_demo(settings, options, workdir, say=typer.echo)
    except DemoInputError as exc:
        raise fail_config(f"{exc}.") from None
    except (BrokerStartError, DemoFailedError) as exc:
        typer.echo(f"dispatchloop: demo failed: {str(exc).rstrip('.')}.", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    typer.echo(verdict(summary))
