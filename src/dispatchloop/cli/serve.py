"""`dispatchloop serve`: the decision sidecar (HTTP on loopback by default)."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from dispatchloop.cli.app import app, fail_config, one_blas_thread, settings_of

if TYPE_CHECKING:
    from dispatchloop.registry import SqlRegistry
    from dispatchloop.settings import Settings

logger = logging.getLogger(__name__)


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default DISPATCHLOOP_SERVING__HOST).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default DISPATCHLOOP_SERVING__PORT)."),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=0.999, help="Chance of a uniformly random eligible driver (logged)."
        ),
    ] = None,
    follow: Annotated[
        bool | None,
        typer.Option(
            "--follow/--no-follow", help="Follow dispatch.models (default: settings, on)."
        ),
    ] = None,
) -> None:
    """Serve decisions over HTTP: POST /v1/decide, GET /v1/models, /healthz, /readyz, /metrics."""
    from dispatchloop.logs import configure_logging  # noqa: PLC0415 - keep `--help` fast
    from dispatchloop.serving.http import SidecarServer, bind, create_app  # noqa: PLC0415
    from dispatchloop.serving.service import start_serving  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    options = settings.serving
    address = (host or options.host, options.port if port is None else port)
    try:
        sock = bind(*address)
    except OSError as exc:
        raise fail_config(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}.") from None
    registry = open_registry_if_present(settings)
    stack = start_serving(
        settings.kafka,
        epsilon=options.epsilon if epsilon is None else epsilon,
        follow=options.follow if follow is None else follow,
        registry=registry,
    )
    server = SidecarServer(create_app(stack.dispatcher, stack.metrics, stack.follower), sock)
    try:
        with _stop_signals_end_cleanly(), one_blas_thread():
            server.run()
    finally:
        if stack.follower is not None:
            stack.follower.stop()
        if registry is not None:
            registry.close()


@contextlib.contextmanager
def _stop_signals_end_cleanly() -> Iterator[None]:
    """uvicorn stops on SIGTERM/SIGINT, then re-raises the signal to the handler it found:
    a no-op one makes a requested stop exit 0 (the operator contract), not -15."""
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: object) -> None:
    logger.debug("signal %d after shutdown ignored", signum)


def open_registry_if_present(settings: Settings) -> SqlRegistry | None:
    """The registry when its root exists and its database opens; else None (logged):
    serving then starts from dispatch.models alone, or the greedy fallback."""
    from dispatchloop.registry import open_registry  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415

    root = settings.resolved_registry_root
    if not root.is_dir():
        logger.info("no registry at %s; serving what dispatch.models promotes", root)
        return None
    try:
        return open_registry(settings.resolved_store_url, root)
    except StoreUnavailableError as exc:
        logger.warning("registry unreachable (%s); serving what dispatch.models promotes", exc)
        return None
