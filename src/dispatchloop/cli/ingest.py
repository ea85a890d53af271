"""`dispatchloop ingest`: consume into the replay store."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, settings_of


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="Stop after N records processed.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", min=0.1, help="Stop after this many seconds without records."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Consume dispatch outcome events into the replay store (dead letters to the DLQ)."""
    from dispatchloop.daemon.ingest import run_ingest  # noqa: PLC0415 - keep `--help` fast
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        totals = run_ingest(settings, max_events=max_events, idle_exit_s=idle_exit)
    except StoreUnavailableError as exc:
        reason = str(exc).rstrip(".")
        raise fail_config(f"{reason} (check DISPATCHLOOP_STORE_URL).") from None
    summary = {
        "processed": totals.processed,
        "stored": totals.stored,
        "duplicates": totals.duplicates,
        "dead_letters": totals.dead_letters,
        "partitions": sorted(totals.partitions),
        "unresolved": totals.unresolved,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"processed {totals.processed}: stored {totals.stored}, "
            f"duplicates {totals.duplicates}, dead letters {totals.dead_letters}"
        )
    if totals.unresolved:
        typer.echo(
            f"dispatchloop: stopped with {totals.unresolved} records neither stored nor "
            "dead-lettered (not committed; the next run reads them again).",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)
