"""`dispatchloop run`: ingest continuously and, on the leader, close the loop.

Threads of one process (the entry point owns signals, GC and logging):
- ingest: the existing consume → store → commit loop (consumers/loop.py);
- scheduler: WATCHDOG=1 every tick, the leader lock, the triggers; one worker
  thread under it runs cycles (training and tuning in spawned children), the
  drift check and the outbox relay (daemon/scheduler.py);
- shadow (when the parts bring a `ShadowScorer`): scores the registry's champion and
  challenger on newly stored events every few seconds (daemon/shadow.py);
- HTTP: /metrics (one CollectorRegistry for everything), /healthz, /readyz
  (ingest, store, leader, the last cycle);
- main: READY=1 once the consumer joined and the store answered, then waits
  for SIGTERM/SIGINT (stop: end the cycle's child within the grace, finish the
  ingest batch, commit, exit 0) or SIGHUP (logged: the configuration is read at
  start only — a live consumer, store and lock cannot be re-pointed safely, so
  `systemctl restart` applies a changed file; a restart loses nothing).

The judge, the registry and the outbox publisher are `LoopParts`. Without them
`run` ingests, elects a leader and reports — and says plainly that it runs no
cycles; it never promotes through a stand-in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from dispatchloop.consumers.loop import IngestLoop, configure_gc_for_ingest
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.consumers.tls import check_tls
from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.http import MetricsServer
from dispatchloop.daemon.leader import LeaderElector, lock_for
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.scheduler import CycleConfig, CycleRunner, Scheduler, SchedulerTimes
from dispatchloop.daemon.shadow import ShadowScorer
from dispatchloop.daemon.systemd import SystemdNotifier
from dispatchloop.daemon.triggers import TriggerPolicy
from dispatchloop.errors import FatalError
from dispatchloop.pipeline.protocols import Canary, Judge, Publisher, Registrar
from dispatchloop.registry.base import Checkpoint, no_checkpoint
from dispatchloop.replay.base import ReplayStore
from dispatchloop.replay.engine import open_store
from dispatchloop.settings import ConfigError, Settings

log = logging.getLogger(__name__)

READY_POLL_S = 0.2
STOP_MARGIN_S = 10.0
"""Added to the child's grace for the whole stop: TimeoutStopSec must exceed grace + this."""


@dataclass(frozen=True)
class LoopParts:
    """What the loop calls but does not own (plugged in by the entry point)."""

    judge: Judge
    """The promotion gate."""
    registrar: Registrar
    """The model registry's write side."""
    publisher: Publisher
    """The outbox relay to dispatch.models."""
    checkpoint: Checkpoint = no_checkpoint
    """Passed at each stage the cycle runner enters (`cycle.<stage>`); crash tests only."""
    shadow: ShadowScorer | None = None
    """Live shadow scoring (own thread; its figures go into each decision record)."""
    canary: Canary | None = None
    """Champion/challenger on live traffic; None: promotions go straight to champion."""


@dataclass
class _Stores:
    ingest: ReplayStore
    runner: ReplayStore
    scheduler: ReplayStore

    def close(self) -> None:
        for store in (self.ingest, self.runner, self.scheduler):
            store.close()


def instance_id() -> str:
    """host:pid — unique among live instances, readable in cycle rows and metrics."""
    return f"{socket.gethostname()}:{os.getpid()}"


PartsFactory = Callable[[Settings, ReplayStore, CollectorRegistry], "LoopParts | None"]
"""Builds the judge, registry and publisher on the worker thread's store, their metrics on
the process's one registry (None: no cycles). `daemon.parts.registry_parts` is the real one."""


def no_parts(
    _settings: Settings, _store: ReplayStore, _metrics: CollectorRegistry
) -> LoopParts | None:
    """An instance that ingests and stands for leader but runs no cycles (tests, ingest-only
    replicas)."""
    return None


def run_daemon(
    settings: Settings, parts_factory: PartsFactory, environ: Mapping[str, str] | None = None
) -> int:
    """Run until SIGTERM/SIGINT (0) or a fatal error (1).

    Before starting: ConfigError for a TLS certificate problem, StoreUnavailableError
    for an unreachable store (both exit 2 at the CLI)."""
    environ = os.environ if environ is None else environ
    check_tls(settings.kafka)  # a certificate problem is exit 2 in one sentence, not a retry loop
    url = settings.resolved_store_url
    stores = _Stores(open_store(url), open_store(url), open_store(url))
    registry = CollectorRegistry()
    try:
        parts = parts_factory(settings, stores.runner, registry)
    except BaseException:
        stores.close()
        raise
    if parts is None:
        log.warning(
            "no judge/registry plugged in: this instance ingests and takes part in the "
            "leader election, but runs no cycles"
        )
    configure_gc_for_ingest()
    notifier = SystemdNotifier(environ)
    me = instance_id()
    loop_metrics = LoopMetrics(registry, me)
    ingest = IngestLoop.from_settings(settings, stores.ingest, IngestMetrics(registry))
    scheduler = _scheduler(settings, parts, stores, loop_metrics, notifier, me)
    stop, fatal = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=_ingest_main, args=(ingest, stop, fatal), name="ingest"),
        threading.Thread(target=_scheduler_main, args=(scheduler, stop, fatal), name="scheduler"),
    ]
    if parts is not None and parts.shadow is not None:
        shadow = threading.Thread(target=_shadow_main, args=(parts.shadow, stop), name="shadow")
        threads.append(shadow)
    server = _metrics_server(settings, registry, ingest, scheduler, parts is not None)
    try:
        ingest.update_store_gauges()
        with _signals(stop):
            for thread in threads:
                thread.start()
            _announce_ready(ingest, stop, notifier, parts is not None)
            stop.wait()
            notifier.stopping("stopping: ending the cycle, finishing the ingest batch")
            ingest.request_stop()
            for thread in threads:
                thread.join(timeout=settings.loop.stop_grace_s + STOP_MARGIN_S * 2)
    finally:
        if server is not None:
            server.stop()
        notifier.close()
        stores.close()
        if parts is not None and parts.shadow is not None:
            parts.shadow.close()
    return 1 if fatal.is_set() else 0


def _scheduler(  # noqa: PLR0917 - private wiring of run_daemon's parts
    settings: Settings,
    parts: LoopParts | None,
    stores: _Stores,
    metrics: LoopMetrics,
    notifier: SystemdNotifier,
    me: str,
) -> Scheduler:
    loop = settings.loop
    cycles = CycleStore(engine_of(stores.scheduler))
    elector = LeaderElector(lock_for(settings.resolved_store_url), cycles, me)
    runner = None
    if parts is not None:
        runner = CycleRunner(
            config=CycleConfig.from_settings(settings),
            store=stores.runner,
            cycles=CycleStore(engine_of(stores.runner)),
            judge=parts.judge,
            registrar=parts.registrar,
            publisher=parts.publisher,
            metrics=metrics,
            fence=elector.still_leading,
            status=notifier.status,
            checkpoint=parts.checkpoint,
            shadow=parts.shadow.record_metrics if parts.shadow is not None else dict,
            canary=parts.canary,
        )
    return Scheduler(
        runner=runner,
        elector=elector,
        cycles=cycles,
        store=stores.scheduler,
        worker_store=stores.runner,
        publisher=parts.publisher if parts is not None else None,
        policy=TriggerPolicy(
            interval=timedelta(seconds=loop.interval_s),
            new_events=loop.new_events,
            drift_threshold=loop.drift_threshold,
            min_events=loop.min_events,
        ),
        times=SchedulerTimes(
            check_interval_s=loop.check_interval_s,
            leader_interval_s=loop.leader_check_interval_s,
            drift_interval_s=loop.drift_check_interval_s,
            drift_window=timedelta(seconds=loop.drift_window_s),
            drift_sample=loop.drift_sample,
            publish_interval_s=loop.publish_interval_s,
            stop_bound_s=loop.stop_grace_s + STOP_MARGIN_S,
            canary_interval_s=loop.canary_check_interval_s,
        ),
        metrics=metrics,
        notifier=notifier,
        reward=settings.reward,
        canary=parts.canary if parts is not None else None,
    )


def _ingest_main(ingest: IngestLoop, stop: threading.Event, fatal: threading.Event) -> None:
    """The ingest thread: its end (other than by stop) stops the process."""
    try:
        ingest.run()
    except Exception:
        log.exception("the ingest loop failed")
        fatal.set()
    finally:
        stop.set()


def _scheduler_main(scheduler: Scheduler, stop: threading.Event, fatal: threading.Event) -> None:
    """The scheduler thread: FatalError from a cycle stops the daemon (exit 1)."""
    try:
        scheduler.run(stop)
    except FatalError as exc:
        log.error("stopping: %s", exc)
        fatal.set()
    except Exception:
        log.exception("the scheduler failed")
        fatal.set()
    finally:
        stop.set()


def _shadow_main(shadow: ShadowScorer, stop: threading.Event) -> None:
    """The shadow thread: a monitor, so its failure is logged and never stops the daemon."""
    while not stop.is_set():
        try:
            shadow.run(stop)
        except Exception:  # an unexpected bug in scoring: keep ingesting and cycling
            shadow.count_error("scoring")
            log.exception("shadow scoring failed; retrying at the next interval")
            stop.wait(shadow.interval_s)


def _announce_ready(
    ingest: IngestLoop, stop: threading.Event, notifier: SystemdNotifier, cycles: bool
) -> None:
    """READY=1 once the consumer joined and the store answers (or never, if stopped first)."""
    while not stop.is_set():
        health = ingest.health
        if health.joined and health.store_ok:
            what = "ingesting" if cycles else "ingesting; no cycles (no registry/gate plugged in)"
            notifier.ready(what)
            log.info("ready: %s", what)
            return
        stop.wait(READY_POLL_S)


def _metrics_server(
    settings: Settings,
    registry: CollectorRegistry,
    ingest: IngestLoop,
    scheduler: Scheduler,
    cycles_enabled: bool,
) -> MetricsServer | None:
    if not settings.metrics.enabled:
        return None

    def readiness() -> tuple[bool, dict[str, Any]]:
        ingest_ready, ingest_detail = ingest.health.readiness()
        loop_ready, loop_detail = scheduler.readiness()
        ready = ingest_ready and loop_ready
        return ready, {
            "ready": ready,
            "ingest": ingest_detail,
            "loop": {**loop_detail, "cycles_enabled": cycles_enabled},
        }

    host, port = settings.metrics.host, settings.metrics.port
    try:
        return MetricsServer(registry, readiness, host, port).start()
    except OSError as exc:
        raise ConfigError(
            f"Cannot serve metrics on {host}:{port} (DISPATCHLOOP_METRICS__PORT): {exc.strerror}."
        ) from None


@contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT stop; SIGHUP says why the configuration is not reloaded live."""

    def on_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "SIGHUP: the configuration is read at start only (the consumer, store and "
            "leader lock cannot be re-pointed live); restart the service to apply it"
        )

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
