"""`dispatchloop ...`: the operator's entry point (Typer).

`main()` builds the one Settings object and turns configuration problems into
exit code 2 with one sentence; each command receives the settings through the
Typer context. One module per command group registers its commands on `app`
(`cli/app.py`). Long work shows a progress bar on a terminal; `--json` prints
machine-readable results on stdout.
"""

from __future__ import annotations

import sys

import typer

from dispatchloop.cli import (  # noqa: F401 - importing a group registers its commands
    config,
    cycles,
    demo,
    evaluate,
    gate,
    ingest,
    models,
    run,
    serve,
    simulate,
    store,
    train,
    tune,
)
from dispatchloop.cli.app import EXIT_BAD_CONFIG, EXIT_FAILURE, app, fail_config, settings_of
from dispatchloop.errors import DispatchloopError, InputError
from dispatchloop.settings import ConfigError

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILURE", "app", "fail_config", "main", "settings_of"]


def main() -> None:
    """Console entry point. Usage errors exit 2 (click); so does a bad configuration."""
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"dispatchloop: configuration error: {exc}", err=True)
        sys.exit(EXIT_BAD_CONFIG)
    except InputError as exc:
        typer.echo(f"dispatchloop: {str(exc).rstrip('.')}.", err=True)
        sys.exit(EXIT_BAD_CONFIG)
    except DispatchloopError as exc:
        typer.echo(f"dispatchloop: {type(exc).__name__}: {str(exc).rstrip('.')}.", err=True)
        sys.exit(EXIT_FAILURE)
