"""`dispatchloop run`: the daemon (ingest + the learning loop on the leader)."""

from __future__ import annotations

import functools
import os

import typer

from dispatchloop.cli.app import app, fail_config, settings_of


@app.command("run")
def run(ctx: typer.Context) -> None:
    """Ingest continuously; the leader among the instances runs the learning cycles.

    Stops cleanly on SIGTERM/SIGINT (exit 0). systemd: Type=notify with WatchdogSec.
    """
    from dispatchloop.daemon.parts import registry_parts  # noqa: PLC0415 - fast --help
    from dispatchloop.daemon.run import run_daemon  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.registry.base import CRASH_ENV, crash_checkpoint  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        checkpoint = crash_checkpoint(os.environ.get(CRASH_ENV))  # tests only
        code = run_daemon(settings, functools.partial(registry_parts, checkpoint=checkpoint))
    except StoreUnavailableError as exc:
        raise fail_config(f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL).") from None
    raise typer.Exit(code)
