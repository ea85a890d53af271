"""`dispatchloop store stats`: what the replay store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dispatchloop.cli.app import app, fail_store, settings_of

store_app = typer.Typer(help="Inspect the replay store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("stats")
def store_stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Events, episodes, decided_at range and size on disk of the replay store."""
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415 - fast --help
    from dispatchloop.replay.report import read_stats, stats_document, stats_lines  # noqa: PLC0415

    try:
        stats = read_stats(settings_of(ctx).resolved_store_url)
    except StoreUnavailableError as exc:
        raise fail_store(exc) from None
    if as_json:
        typer.echo(json.dumps(stats_document(stats)))
        return
    for line in stats_lines(stats):
        typer.echo(line)
