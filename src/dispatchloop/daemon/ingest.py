"""`dispatchloop ingest`: the ingest loop with its metrics endpoint and signal handling.

Lives in daemon/ because it wires consumers/ to the HTTP endpoint; the loop itself
knows nothing about HTTP, signals or terminals.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from prometheus_client import CollectorRegistry

from dispatchloop.consumers.loop import (
    BatchReport,
    IngestLoop,
    IngestTotals,
    configure_gc_for_ingest,
)
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.daemon.http import MetricsServer
from dispatchloop.progress import progress
from dispatchloop.replay.engine import open_store
from dispatchloop.settings import ConfigError, Settings

log = logging.getLogger(__name__)


def run_ingest(
    settings: Settings, max_events: int | None = None, idle_exit_s: float | None = None
) -> IngestTotals:
    """Consume until SIGTERM/SIGINT, `max_events` processed or `idle_exit_s` idle.

    Raises StoreUnavailableError before consuming anything if the store cannot be
    opened (the CLI reports it as a configuration error).
    """
    store = open_store(settings.resolved_store_url)
    configure_gc_for_ingest()
    registry = CollectorRegistry()
    loop = IngestLoop.from_settings(settings, store, IngestMetrics(registry))
    server = None
    try:
        if settings.metrics.enabled:
            server = _metrics_server(settings, registry, loop)
        loop.update_store_gauges()
        with _stop_on_signals(loop), progress("ingest", total=max_events, logger=log) as bar:

            def advance(report: BatchReport) -> None:
                bar.update(
                    report.records,
                    stored=loop.totals.stored,
                    duplicates=loop.totals.duplicates,
                    dead_letters=loop.totals.dead_letters,
                )

            return loop.run(max_events=max_events, idle_exit_s=idle_exit_s, on_batch=advance)
    finally:
        if server is not None:
            server.stop()
        store.close()


def _metrics_server(
    settings: Settings, registry: CollectorRegistry, loop: IngestLoop
) -> MetricsServer:
    host, port = settings.metrics.host, settings.metrics.port
    try:
        server = MetricsServer(registry, loop.health.readiness, host, port)
    except OSError as exc:
        raise ConfigError(
            f"Cannot serve metrics on {host}:{port} (DISPATCHLOOP_METRICS__PORT): {exc.strerror}."
        ) from None
    return server.start()


@contextmanager
def _stop_on_signals(loop: IngestLoop) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to finish its batch, commit and return."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; finishing the current batch", signal.Signals(signum).name)
        loop.request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
