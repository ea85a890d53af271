"""The Typer application every command group registers on, and the helpers they share.

The root callback builds the one Settings object; each command receives it
through the Typer context (`settings_of`). Errors of the `errors.InputError`
family reaching `main()` exit 2 with their one sentence (`fail_config` for a
command's own checks); other `DispatchloopError`s exit 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from dispatchloop.settings import Settings, load_settings

EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

app = typer.Typer(
    name="dispatchloop",
    help="Closes the learning loop of a reinforcement-learning dispatcher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (env DISPATCHLOOP_CONFIG)."),
    ] = None,
) -> None:
    ctx.obj = load_settings(config)


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def fail_config(message: str) -> typer.Exit:
    """Report a configuration problem in one sentence; the caller raises the result."""
    typer.echo(f"dispatchloop: configuration error: {message}", err=True)
    return typer.Exit(EXIT_BAD_CONFIG)


def fail_store(exc: Exception) -> typer.Exit:
    """An unreachable replay store (StoreUnavailableError): exit 2 in one sentence."""
    return fail_config(f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL).")


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Matrix products on one BLAS thread, for commands that decide one booking at a
    time (`serve`, `simulate`); process-wide, so the entry point's call.

    A decision's products are small (40 rows): OpenBLAS splits them over its worker
    threads, which then spin waiting for the next one. That doubled the CPU per
    decision and took the second core from the HTTP clients and the event loop
    (benchmarks/BENCHMARKS.md, "Serving"). The same results at half the CPU."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - keep `--help` fast

    with threadpool_limits(limits=1, user_api="blas"):
        yield
