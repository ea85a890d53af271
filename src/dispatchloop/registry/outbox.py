"""`OutboxPublisher`: drains the registry's outbox to `dispatch.models`.

Why an outbox: the alias move and its event commit in one database transaction, so
an event can never be lost between "the alias moved" and "the broker has it". The
publisher reads pending rows in order, re-validates each against
`ModelPromotedEvent`, sends them (key = alias or `<company>/<alias>`, value = the
event JSON, headers `event_id` and `schema_version`), waits for the broker's
acknowledgement (acks=all) and only then marks them published. A crash after the
send and before the mark re-sends the event: delivery is at-least-once and
consumers deduplicate on `event_id`. While the broker is down, every attempt is
counted and retried with exponential backoff; the producer is re-created after a
failure (an idempotent producer that lived through a broker restart can stay
broken until re-created).

The daemon calls `drain_once()` (or `run(stop)`) in its leader loop with its own
producer factory; the CLI calls `drain(timeout_s)` after a promotion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from kafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from dispatchloop.errors import FatalError
from dispatchloop.events import SCHEMA_VERSION, ModelPromotedEvent
from dispatchloop.registry.base import Checkpoint, Clock, ModelRegistry, OutboxRow, no_checkpoint
from dispatchloop.registry.metrics import RegistryMetrics
from dispatchloop.settings import KafkaSettings, RegistrySettings

logger = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 5_000


class Producer(Protocol):
    """What the publisher needs of a kafka-python `KafkaProducer`."""

    def send(
        self, topic: str, *, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> Any: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


ProducerFactory = Callable[[], Producer]


class DrainResult(NamedTuple):
    """One drain: how many events the broker acknowledged, and how many are still pending."""

    published: int
    backlog: int
    error: str | None = None


class OutboxPublisher:
    """Publishes pending outbox rows; one instance per process (not thread-safe)."""

    def __init__(
        self,
        registry: ModelRegistry,
        producer_factory: ProducerFactory,
        topic: str,
        *,
        clock: Clock,
        ack_timeout_s: float = 10.0,
        batch_size: int = 100,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 5.0,
        checkpoint: Checkpoint = no_checkpoint,
    ) -> None:
        self._registry = registry
        self._factory = producer_factory
        self._topic = topic
        self._clock = clock
        self._ack_timeout_s = ack_timeout_s
        self._batch_size = batch_size
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._checkpoint = checkpoint
        self._producer: Producer | None = None
        self._metrics: RegistryMetrics | None = getattr(registry, "metrics", None)

    def drain_once(self) -> DrainResult:
        """Publish one batch of pending rows; never raises for broker trouble."""
        rows = self._registry.pending_outbox(self._batch_size)
        if not rows:
            return DrainResult(0, 0)
        try:
            published = self._publish(rows)
        except KafkaError as exc:  # KafkaTimeoutError included: broker down or slow
            return self._failed(rows, exc)
        return DrainResult(published, self._backlog())

    def drain(self, timeout_s: float, stop: threading.Event | None = None) -> DrainResult:
        """Drain until nothing is pending or `timeout_s` passed, backing off after failures."""
        deadline = time.monotonic() + timeout_s
        delay, published, last = self._backoff[0], 0, DrainResult(0, 0)
        while True:
            last = self.drain_once()
            published += last.published
            if last.backlog == 0 or time.monotonic() >= deadline:
                return last._replace(published=published)
            if last.error is None:
                delay = self._backoff[0]
                continue
            wait = min(delay, max(0.0, deadline - time.monotonic()))
            if stop is not None and stop.wait(wait):
                return last._replace(published=published)
            if stop is None:
                time.sleep(wait)
            delay = min(delay * 2, self._backoff[1])

    def run(self, stop: threading.Event, idle_s: float = 0.5) -> None:
        """Publish until `stop` is set (the daemon's leader loop, `models publish --follow`)."""
        while not stop.is_set():
            result = self.drain(timeout_s=idle_s, stop=stop)
            if result.backlog == 0:
                stop.wait(idle_s)

    def close(self) -> None:
        """Close the producer (pending sends were already acknowledged or failed)."""
        self._drop_producer()

    def _publish(self, rows: list[OutboxRow]) -> int:
        producer = self._ensure_producer()
        futures = []
        for row in rows:
            value = _validated(row, self._metrics)
            headers = [
                ("event_id", row.event_id.encode()),
                ("schema_version", str(SCHEMA_VERSION).encode()),
            ]
            futures.append(
                producer.send(self._topic, value=value, key=row.key.encode(), headers=headers)
            )
        self._checkpoint("publish.sent")
        producer.flush(timeout=self._ack_timeout_s)
        for future in futures:
            future.get(timeout=self._ack_timeout_s)
        self._checkpoint("publish.acked")
        self._registry.mark_published([row.id for row in rows], self._now())
        self._checkpoint("publish.marked")
        if self._metrics is not None:
            self._metrics.published.inc(len(rows))
        return len(rows)

    def _failed(self, rows: list[OutboxRow], exc: Exception) -> DrainResult:
        kind = "timeout" if isinstance(exc, KafkaTimeoutError) else "broker"
        message = f"{type(exc).__name__}: {exc}".strip()
        logger.warning(
            "publishing %d promotion event(s) failed (%s); will retry", len(rows), message
        )
        if self._metrics is not None:
            self._metrics.publish_failures.labels(kind).inc()
        self._registry.record_publish_failure([row.id for row in rows], message)
        self._drop_producer()
        return DrainResult(0, self._backlog(), message)

    def _backlog(self) -> int:
        return self._registry.outbox_backlog()

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            self._producer = self._factory()
        return self._producer

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=1.0)
        except KafkaError as exc:  # closing a producer whose broker is gone
            logger.debug("closing the producer failed: %s", exc)

    def _now(self) -> datetime:
        return self._clock()


def _validated(row: OutboxRow, metrics: RegistryMetrics | None) -> bytes:
    """The row's payload, checked against the event contract before it leaves."""
    try:
        event = ModelPromotedEvent.model_validate_json(row.payload)
    except ValidationError as exc:  # written by this code: a broken invariant
        if metrics is not None:
            metrics.publish_failures.labels("invalid").inc()
        raise FatalError(f"outbox row {row.id} is not a valid promotion event: {exc}") from exc
    return event.model_dump_json().encode()


def make_producer(client_options: dict[str, Any], ack_timeout_s: float) -> Producer:
    """An acks=all, idempotent kafka-python producer (the CLI's and the daemon's default).

    `client_options` is `settings.kafka.client_options()`: security settings apply."""
    from kafka import KafkaProducer  # noqa: PLC0415 - only when actually publishing

    timeout_ms = int(ack_timeout_s * 1_000)
    request_timeout_ms = min(int(client_options.get("request_timeout_ms", 30_000)), timeout_ms)
    options = {**client_options, "request_timeout_ms": request_timeout_ms}
    producer: Producer = KafkaProducer(
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        retries=3,
        delivery_timeout_ms=max(timeout_ms, request_timeout_ms + 5),
        max_block_ms=timeout_ms,
        bootstrap_timeout_ms=min(BOOTSTRAP_TIMEOUT_MS, timeout_ms),
        **options,
    )
    return producer


def publisher_from_settings(
    registry: ModelRegistry,
    kafka: KafkaSettings,
    settings: RegistrySettings,
    *,
    clock: Clock,
    checkpoint: Checkpoint = no_checkpoint,
) -> OutboxPublisher:
    """The outbox publisher the `models` commands and the daemon build from their settings."""
    options = kafka.client_options()
    return OutboxPublisher(
        registry,
        lambda: make_producer(options, settings.ack_timeout_s),
        kafka.models_topic,
        clock=clock,
        ack_timeout_s=settings.ack_timeout_s,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
        checkpoint=checkpoint,
    )
