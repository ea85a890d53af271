"""Follow `dispatch.models`: load each promoted version and swap it into a `Dispatcher`.

How, and why:
- **No consumer group, from the beginning.** Every dispatcher must see every alias
  move, so each reads the whole (compacted) topic itself. While catching up to the
  end offsets seen at start, only the latest event per key is kept, so a new
  dispatcher loads what serves now, not every version ever promoted.
- **Deduplicated on `event_id`** (the outbox delivers at least once).
- **Verify, then swap.** A version is loaded and checked (`loader.load_from_event`)
  before the scope's routing is replaced in one reference swap, so decisions never
  see a half-loaded model. A refused version leaves the routing as it was, is
  logged and counted by reason.
- **Every event type is one alias move**: `model.promoted` and `model.rolled_back`
  point the alias at `model_version`; `model.traffic_changed` only moves its share.
  The challenger's `traffic_share` is the routing's canary share; the champion
  serves the rest (its own event's share is that complement, so it is not needed).
- **Seeded from the registry** when one is reachable (`seed_from_registry`), so a
  dispatcher serves the current aliases even before the broker answers. An event
  older than the alias move a slot was loaded from (the outbox may not have
  published the newest move yet) never overrides it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NamedTuple

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from dispatchloop.errors import TransientError
from dispatchloop.events import AliasName, ModelPromotedEvent
from dispatchloop.registry.base import ModelRegistry, VersionNotFoundError
from dispatchloop.serving.dispatcher import Dispatcher, Routing, ServedModel
from dispatchloop.serving.loader import ModelRefusedError, load_from_event, load_from_registry
from dispatchloop.serving.metrics import ServingMetrics
from dispatchloop.settings import KafkaSettings

logger = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 5_000
EventLoader = Callable[[ModelPromotedEvent], ServedModel]
ConsumerFactory = Callable[[], Any]


class Slot(NamedTuple):
    """What one alias of one scope serves now."""

    model: ServedModel
    share: float
    sha256: str
    """Weights hash of the loaded version: a re-announced version is not reloaded."""
    as_of: datetime
    """When the alias move behind it committed: an older event never overrides it."""


def make_models_consumer(kafka: KafkaSettings) -> Any:
    """A group-less kafka-python consumer with the shared client options (security included)."""
    return KafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        **kafka.client_options(),
    )


class ModelFollower:
    """Applies promotion events to a dispatcher, from a background thread or directly."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        topic: str,
        consumer_factory: ConsumerFactory,
        metrics: ServingMetrics,
        loader: EventLoader = load_from_event,
        poll_timeout_ms: int = 250,
        retry_s: float = 1.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.caught_up = threading.Event()
        """Set once the topic was read to the end offsets seen at start (readiness)."""
        self._topic = topic
        self._factory = consumer_factory
        self._loader = loader
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_s = retry_s
        self._slots: dict[tuple[str, AliasName], Slot] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- applying alias moves ------------------------------------------------------

    def apply(self, event: ModelPromotedEvent) -> bool:
        """Load the event's version and swap its scope's routing; False if skipped or refused."""
        with self._lock:
            event_id = str(event.event_id)
            if event_id in self._seen:
                return False
            self._seen.add(event_id)
            current = self._slots.get((event.scope, event.alias))
            if current is not None and event.promoted_at < current.as_of:
                logger.info(
                    "ignoring %s of %s: older than what serves", event.key, event.promoted_at
                )
                return False
            try:
                model = self._model_for(event)
            except ModelRefusedError as exc:
                self.metrics.load_failures.labels(exc.reason).inc()
                logger.warning("refused %s; keeping the model that serves: %s", event.key, exc)
                return False
            slot = Slot(model, event.traffic_share, event.sha256, event.promoted_at)
            self._set(event.scope, event.alias, slot)
            return True

    def _model_for(self, event: ModelPromotedEvent) -> ServedModel:
        """Reuse a loaded version whose hash matches (a share change, a challenger promoted)."""
        for slot in self._slots.values():
            if slot.model.version == event.model_version and slot.sha256 == event.sha256:
                return slot.model
        return self._loader(event)

    def _set(self, scope: str, alias: AliasName, slot: Slot) -> None:
        self._slots[(scope, alias)] = slot
        champion = self._slots.get((scope, "champion"))
        challenger = self._slots.get((scope, "challenger"))
        if challenger is not None and (
            challenger.share <= 0.0
            or (champion is not None and challenger.model.version == champion.model.version)
        ):
            challenger = None  # an ended canary (share 0, or rolled back onto the champion)
        routing = Routing(
            champion=None if champion is None else champion.model,
            challenger=None if challenger is None else challenger.model,
            challenger_share=0.0 if challenger is None else challenger.share,
        )
        self.dispatcher.swap(scope, routing)
        self.metrics.model_loads.labels(scope, alias).inc()
        self.metrics.model_info.clear()
        for (each_scope, each_alias), each in self._slots.items():
            self.metrics.model_info.labels(each_scope, each_alias, each.model.version).set(1)
        self.metrics.last_swap.set(time.time())
        logger.info(
            "%s of scope %s now serves %s (share %.3g)",
            alias,
            scope,
            slot.model.version,
            slot.share,
        )

    def seed_from_registry(self, registry: ModelRegistry) -> int:
        """Serve the registry's current aliases now; returns how many were loaded."""
        loaded = 0
        try:
            states = registry.aliases()
        except TransientError as exc:
            self.metrics.follower_errors.labels("registry").inc()
            logger.warning("registry unreachable, waiting for dispatch.models: %s", exc)
            return 0
        for state in states:
            try:
                model = load_from_registry(registry, state.version)
            except ModelRefusedError as exc:
                self.metrics.load_failures.labels(exc.reason).inc()
                logger.warning("refused %s of scope %s: %s", state.alias, state.scope, exc)
                continue
            except (VersionNotFoundError, TransientError) as exc:
                self.metrics.follower_errors.labels("registry").inc()
                logger.warning("cannot read %s from the registry: %s", state.version, exc)
                continue
            with self._lock:
                sha = registry.get(state.version).card.weights_sha256
                slot = Slot(model, state.traffic_share, sha, state.updated_at)
                self._set(state.scope, state.alias, slot)
            loaded += 1
        return loaded

    def slots(self) -> dict[tuple[str, AliasName], Slot]:
        """What every scope's aliases serve now (a copy)."""
        with self._lock:
            return dict(self._slots)

    # --- reading dispatch.models ---------------------------------------------------

    def start(self) -> ModelFollower:
        """Follow the topic in a daemon thread until `stop()`."""
        self._thread = threading.Thread(target=self.run, name="model-follower", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """The following thread runs (False before `start()` and after it ended)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait for it (bounded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def run(self) -> None:
        """Consume until stopped; broker trouble is counted and retried, never fatal."""
        while not self._stop.is_set():
            consumer = self._connect()
            if consumer is None:
                continue
            try:
                self._follow(consumer)
            except KafkaError as exc:
                self.metrics.follower_errors.labels("broker").inc()
                logger.warning("reading %s failed, reconnecting: %s", self._topic, exc)
                self._stop.wait(self._retry_s)
            finally:
                _close(consumer)

    def _connect(self) -> Any | None:
        try:
            return self._factory()
        except KafkaError as exc:
            self.metrics.follower_errors.labels("broker").inc()
            logger.warning("cannot reach the broker for %s: %s", self._topic, exc)
            self._stop.wait(self._retry_s)
            return None

    def _follow(self, consumer: Any) -> None:
        partitions = self._assign(consumer)
        while partitions is None:  # no topic yet: nothing was ever promoted
            self.caught_up.set()
            if self._stop.wait(self._retry_s):
                return
            partitions = self._assign(consumer)
        end = consumer.end_offsets(partitions)
        backlog: dict[str, ModelPromotedEvent] = {}
        while not self._stop.is_set():
            batches = consumer.poll(timeout_ms=self._poll_timeout_ms)
            events = self._parse(record for records in batches.values() for record in records)
            if self.caught_up.is_set():
                for event in events:
                    self.apply(event)
                continue
            backlog.update((event.key, event) for event in events)
            if all(consumer.position(tp) >= end[tp] for tp in partitions):
                for event in sorted(backlog.values(), key=lambda e: e.promoted_at):
                    self.apply(event)
                backlog.clear()
                self.caught_up.set()

    def _assign(self, consumer: Any) -> list[TopicPartition] | None:
        ids = consumer.partitions_for_topic(self._topic)
        if not ids:
            return None
        partitions = [TopicPartition(self._topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        return partitions

    def _parse(self, records: Iterable[Any]) -> list[ModelPromotedEvent]:
        events = []
        for record in records:
            try:
                events.append(ModelPromotedEvent.model_validate_json(record.value))
            except ValidationError as exc:
                self.metrics.follower_errors.labels("invalid_event").inc()
                logger.warning(
                    "skipping an invalid promotion event at %s/%d offset %d: %s",
                    record.topic,
                    record.partition,
                    record.offset,
                    exc.errors(include_url=False)[0]["msg"],
                )
        return events


def _close(consumer: Any) -> None:
    try:
        consumer.close()
    except KafkaError as exc:
        logger.debug("closing the models consumer failed: %s", exc)
