"""`dispatchloop config show`: the effective configuration, secrets masked."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dispatchloop.cli.app import app, settings_of
from dispatchloop.settings import masked_dump

config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration with secrets masked."""
    data = masked_dump(settings_of(ctx))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for line in _flatten(data):
        typer.echo(line)


def _flatten(data: dict[str, object], prefix: str = "") -> list[str]:
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.extend(_flatten(value, f"{prefix}{key}."))
        else:
            lines.append(f"{prefix}{key} = {json.dumps(value)}")
    return lines
