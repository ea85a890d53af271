"""The ingest loop: poll → parse → store (durable) → dead letters (acknowledged) → commit.

The order is the whole guarantee: offsets are committed only after the batch's
valid events are durably stored and its dead letters acknowledged, so a crash at
any point re-delivers the batch, the store skips what it already holds (by
event_id) and the dead-letter ledger skips what the DLQ already holds. A failing
store or DLQ never lets the loop commit past a record: it rewinds to the batch's
first offsets, backs off and tries again. The broker going away only makes the
loop reconnect with backoff; the process stays up.

Whose fault is a failure? One rule, applied at every stage of a record's handling:
- Screening (decode, structure, model rules) is a pure function of the record's
  bytes: whatever it raises is the record's fault, and the record becomes a dead
  letter (`unprocessable`, the exception's class in `dlq.detail`). Retrying could only
  raise again, so a crash loop on one record cannot happen.
- The store says whose fault a failed write is: `StoreRejectedError` (the data) makes
  the loop bisect the batch until the refused rows are alone; they become dead letters
  (`unstorable`) and every other row is stored. `StoreUnavailableError` (the store)
  rewinds and retries the batch with backoff, never committing past it.
- A dead letter too big for the DLQ is sent truncated (deadletter.py), so the DLQ
  can only fail for the broker's reasons, which are retried.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaConfigurationError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from dispatchloop.consumers.backoff import Backoff
from dispatchloop.consumers.clients import make_consumer, make_dlq_producer, make_dlq_reader
from dispatchloop.consumers.deadletter import (
    DeadLetter,
    DeadLetterDeliveryError,
    DeadLetterLedger,
    DeadLetterSender,
    scan_already_dead_lettered,
)
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.consumers.offsets import commit_offsets, lag, rewind_positions
from dispatchloop.events import REASON_UNPROCESSABLE, REASON_UNSTORABLE, EventKeys, Rejection
from dispatchloop.replay.base import (
    IncomingEvent,
    ReplayStore,
    StoreRejectedError,
    StoreUnavailableError,
)
from dispatchloop.screening import screen_outcome
from dispatchloop.settings import Settings

log = logging.getLogger(__name__)

DLQ_ATTEMPTS_IN_PLACE = 3
# A poll's records (thousands of kafka-python objects and their screened keys) live until
# the batch is stored; with CPython's default gen-0 threshold of 700 they are promoted
# and re-scanned by full collections again and again: parsing measured 2-5x slower with
# pydantic models. Refcounting frees them at the end of the batch, so rare collections
# lose nothing.
INGEST_GC_THRESHOLDS = (100_000, 50, 50)
LAG_INTERVAL_S = 5.0
STORE_STATS_INTERVAL_S = 30.0


def configure_gc_for_ingest() -> None:
    """Process-wide: call once from the process entry point (CLI, benchmark), never on import."""
    gc.freeze()  # everything imported so far is permanent: never scanned again
    gc.set_threshold(*INGEST_GC_THRESHOLDS)


class BatchReport(NamedTuple):
    """What one committed poll did; fed to progress displays."""

    records: int
    stored: int
    duplicates: int
    dead_letters: int


@dataclass
class IngestTotals:
    """Counts of this run (metrics hold the same, labelled, for Prometheus)."""

    processed: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    partitions: set[int] = field(default_factory=set)
    # Records of a batch that was still failing (neither stored nor dead-lettered,
    # not committed) when the loop stopped: the next run reads them again.
    unresolved: int = 0


@dataclass
class IngestHealth:
    """What /readyz reports; written by the loop thread, read by the HTTP thread.

    Broker contact is proven, not assumed: kafka-python's poll() returns nothing
    both when a partition is quiet and when every connection is refused, so only a
    poll that returned records, an answered offsets request (every LAG_INTERVAL_S)
    or a commit counts as contact. Readiness fails when the last contact or the last
    completed poll is older than `stale_after_s`.
    """

    stale_after_s: float = 20.0
    clock: Callable[[], float] = time.monotonic
    joined: bool = False
    broker_ok: bool = False
    store_ok: bool = True
    last_error: str | None = None
    last_poll_at: float | None = None
    last_contact_at: float | None = None
    idle_member: bool = False  # joined with no partitions: nothing to probe

    def polled(self, records: bool) -> None:
        now = self.clock()
        self.last_poll_at = now
        if records:
            self.contact(now)

    def contact(self, now: float | None = None) -> None:
        self.last_contact_at = self.clock() if now is None else now
        self.broker_ok = True

    def unreachable_seconds(self) -> float:
        """Seconds since the broker last answered (0 before the first connection attempt)."""
        if self.last_contact_at is None:
            return 0.0
        return max(0.0, self.clock() - self.last_contact_at)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock()
        reasons = []
        if not self.joined:
            reasons.append("the consumer has not joined its group")
        poll_age = None if self.last_poll_at is None else now - self.last_poll_at
        if self.joined and (poll_age is None or poll_age > self.stale_after_s):
            reasons.append(f"no poll completed for over {self.stale_after_s:g} s")
        silent = None if self.last_contact_at is None else now - self.last_contact_at
        broker_ok = self.broker_ok and (
            self.idle_member or (silent is not None and silent <= self.stale_after_s)
        )
        if not broker_ok:
            reasons.append(
                "the broker has not answered yet"
                if silent is None
                else f"no answer from the broker for {silent:.0f} s"
            )
        if not self.store_ok:
            reasons.append("the store cannot be written")
        ready = not reasons
        return ready, {
            "ready": ready,
            "reasons": reasons,
            "consumer_joined": self.joined,
            "broker_reachable": broker_ok,
            "broker_silent_s": None if silent is None else round(silent, 1),
            "last_poll_age_s": None if poll_age is None else round(poll_age, 1),
            "store_reachable": self.store_ok,
            "last_error": self.last_error,
        }


class _Written(NamedTuple):
    """What the writer thread did with a batch's valid events."""

    stored: int
    duplicates: int
    refused: list[DeadLetter]  # rows the store could not hold: dead letters now


class _InFlight(NamedTuple):
    """A batch handed to the store writer thread, not yet committed."""

    batch: Mapping[TopicPartition, Sequence[Any]]
    letters: list[DeadLetter]
    records: int
    write: futures.Future[_Written]


class _Split(NamedTuple):
    valid: list[IncomingEvent]
    sources: list[Any]  # the record each valid event came from (same order)
    letters: list[DeadLetter]


def dead_letter(record: Any, reason: str, detail: str) -> DeadLetter:
    """A record's dead letter: its coordinates, original key and bytes, and why."""
    return DeadLetter(
        record.topic, record.partition, record.offset, record.key, record.value, reason, detail
    )


def screen_record(value: bytes | None, max_bytes: int) -> EventKeys | Rejection:
    """The record's verdict; an exception here is the record's fault, never the loop's.

    Screening touches nothing but the bytes, so an exception is a property of them
    (deep nesting, a decoder bug): the record becomes an `unprocessable` dead letter.
    MemoryError is the one exception that says nothing about the record.
    """
    try:
        return screen_outcome(value, max_bytes)
    except MemoryError:
        raise
    except Exception as exc:  # the rule above; counted as dead_letters{reason=unprocessable}
        log.warning("screening raised %s; the record is a dead letter", type(exc).__name__)
        return Rejection(REASON_UNPROCESSABLE, f"{type(exc).__name__} while screening: {exc}")


def split_records(batch: Mapping[TopicPartition, Sequence[Any]], max_bytes: int) -> _Split:
    """One pass over a poll: valid events for the store, the rest as dead letters."""
    valid: list[IncomingEvent] = []
    sources: list[Any] = []
    letters: list[DeadLetter] = []
    for records in batch.values():
        for record in records:
            value = record.value
            parsed = screen_record(value, max_bytes)
            if isinstance(parsed, Rejection):
                letters.append(dead_letter(record, parsed.reason, parsed.detail))
            else:
                valid.append(IncomingEvent(parsed, value))
                sources.append(record)
    return _Split(valid, sources, letters)


def write_isolating(
    store: ReplayStore, valid: Sequence[IncomingEvent], sources: Sequence[Any]
) -> _Written:
    """Write the batch; if the store refuses its data, bisect until the refused rows are
    alone, store every other row and return the refused ones as dead letters.

    One bad row among n costs about 2·log2(n) extra writes, only when it happens.
    StoreUnavailableError propagates: that is the store's fault, not a row's.
    """
    try:
        result = store.write_batch(valid)
    except StoreRejectedError as exc:
        if len(valid) == 1:
            letter = dead_letter(sources[0], REASON_UNSTORABLE, f"the store refused it: {exc}")
            return _Written(0, 0, [letter])
        half = len(valid) // 2
        first = write_isolating(store, valid[:half], sources[:half])
        second = write_isolating(store, valid[half:], sources[half:])
        return _Written(
            first.stored + second.stored,
            first.duplicates + second.duplicates,
            first.refused + second.refused,
        )
    return _Written(result.inserted, result.duplicates, [])


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks assignment changes; does no I/O (kafka-python forbids blocking commits here)."""

    def __init__(self, loop: IngestLoop) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._loop.partitions_revoked(revoked)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._loop.partitions_assigned(assigned)


ConsumerFactory = Callable[[ConsumerRebalanceListener], Any]
ClientFactory = Callable[[], Any]


class IngestLoop:
    """Runs the consume loop until `request_stop()`, `max_events` or `idle_exit_s`."""

    def __init__(
        self,
        settings: Settings,
        store: ReplayStore,
        metrics: IngestMetrics,
        *,
        consumer_factory: ConsumerFactory,
        producer_factory: ClientFactory,
        reader_factory: ClientFactory,
        rng: np.random.Generator,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._consumer_factory = consumer_factory
        self._reader_factory = reader_factory
        ingest = settings.ingest
        self._sender = DeadLetterSender(
            producer_factory,
            settings.kafka.dlq_topic,
            ingest.dlq_send_timeout_s,
            ingest.dlq_max_record_bytes,
            ingest.dlq_truncated_prefix_bytes,
        )
        self._backoff = Backoff(
            ingest.reconnect_backoff_initial_s, ingest.reconnect_backoff_max_s, rng
        )
        self._ledger = DeadLetterLedger()
        self._unscanned: set[TopicPartition] = set()
        self._pending_commit: dict[TopicPartition, OffsetAndMetadata] = {}
        self._consumer: Any | None = None
        self._writer = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._inflight: _InFlight | None = None
        self._reader: Any | None = None
        self._stop = threading.Event()
        self.health = IngestHealth(stale_after_s=ingest.readiness_timeout_s)
        metrics.unreachable_seconds.set_function(self.health.unreachable_seconds)
        self.totals = IngestTotals()
        self._failing_records = 0  # records of the batch that failed last, until it succeeds
        self._next_lag_at = 0.0
        self._lag_partitions: set[int] = set()
        self._next_stats_at = 0.0
        self._records_seen_at: float | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, store: ReplayStore, metrics: IngestMetrics, seed: int | None = None
    ) -> IngestLoop:
        """The production wiring: real kafka-python clients built from settings."""
        return cls(
            settings,
            store,
            metrics,
            consumer_factory=lambda listener: make_consumer(settings, listener),
            producer_factory=lambda: make_dlq_producer(settings),
            reader_factory=lambda: make_dlq_reader(settings),
            rng=np.random.default_rng(seed),
        )

    # --- control -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the current batch, commit, close (safe from a signal handler)."""
        self._stop.set()

    def run(
        self,
        max_events: int | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> IngestTotals:
        try:
            while not self._stop.is_set():
                remaining = None if max_events is None else max_events - self.totals.processed
                if remaining is not None and remaining <= 0:
                    break
                if self._consumer is None and not self._connect():
                    continue
                report = self._poll_once(remaining)
                now = time.monotonic()
                if report is not None and on_batch is not None:
                    on_batch(report)
                # Idle means no records at all: a batch that keeps failing is not idle.
                # The idle clock starts at the first assignment: joining a group whose
                # dead member has not expired yet can take longer than --idle-exit.
                seen = self._records_seen_at
                if idle_exit_s is not None and seen is not None and now - seen >= idle_exit_s:
                    log.info("no new records for %.1f s; stopping", idle_exit_s)
                    break
                self._refresh_gauges(now)
        finally:
            self._shutdown()
            self.totals.unresolved = self._failing_records
        return self.totals

    # --- rebalance callbacks (called inside poll) ----------------------------------------

    def partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self._drain_inflight("partitions revoked")
        for tp in revoked:
            self._ledger.drop(tp)
            self._unscanned.discard(tp)
            self._pending_commit.pop(tp, None)
            if tp.partition in self._lag_partitions:
                self._lag_partitions.discard(tp.partition)
                self._metrics.consumer_lag.remove(str(tp.partition))
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in revoked)})

    def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._unscanned.update(assigned)
        # --idle-exit counts from here too: waiting for a group to hand out partitions
        # (a dead member's session expiring) is not "no new records".
        self._records_seen_at = time.monotonic()
        self.totals.partitions.update(tp.partition for tp in assigned)
        self.health.joined = True
        log.info(
            "partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)}
        )

    # --- one poll ------------------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            self._consumer = self._consumer_factory(_Listener(self))
        except KafkaConfigurationError:
            raise
        except KafkaError as exc:
            self._broker_failed("cannot reach the broker", exc)
            return False
        self.health.contact()  # the constructor reached a bootstrap broker
        log.info("consumer connected", extra={"topic": self._settings.kafka.topic})
        return True

    def _poll_once(self, remaining: int | None) -> BatchReport | None:
        consumer = self._consumer
        assert consumer is not None
        limit = self._settings.kafka.max_poll_records
        if remaining is not None:
            limit = min(limit, remaining - self._inflight_records())
            if limit <= 0:  # the rest of --max-events is in flight: just finish it
                return self._finish_or_abandon()
        try:
            batch = consumer.poll(
                timeout_ms=self._settings.ingest.poll_timeout_ms, max_records=limit
            )
        except KafkaError as exc:
            self._broker_failed("poll failed; reconnecting", exc)
            self._close_consumer()
            return None
        self.health.polled(bool(batch))
        self._commit_pending()
        if not batch:
            return self._finish_or_abandon()
        return self._process(batch)

    def _process(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> BatchReport | None:
        """Parse this poll while the previous one is written; then hand this one to the writer.

        Pipelining hides the store write (SQLite and psycopg release the GIL) behind
        the next poll and parse. Order is kept: batch k is committed only after its
        write and dead letters are done, and a failure of batch k rewinds k and k+1.
        """
        records = sum(len(r) for r in batch.values())
        self._records_seen_at = time.monotonic()
        self._metrics.consumed.inc(records)
        split = split_records(batch, self._settings.ingest.max_event_bytes)
        try:
            self._scan_dlq(batch)
            report = self._finish_inflight()
        except _BatchFailedError as failure:
            self._abandon(failure, batch)
            return None
        write = self._writer.submit(self._write, split.valid, split.sources)
        self._inflight = _InFlight(batch, split.letters, records, write)
        return report

    def _inflight_records(self) -> int:
        return 0 if self._inflight is None else self._inflight.records

    def _finish_or_abandon(self) -> BatchReport | None:
        try:
            return self._finish_inflight()
        except _BatchFailedError as failure:
            self._abandon(failure, None)
            return None

    def _finish_inflight(self, commit: bool = True) -> BatchReport | None:
        """Wait for the batch being written, deliver its dead letters, commit it."""
        inflight = self._inflight
        if inflight is None:
            return None
        written = inflight.write.result()  # re-raises _BatchFailedError
        dead = self._deliver_dead_letters(inflight.letters + written.refused)
        self._inflight = None
        self._failing_records = 0
        self._backoff.reset()
        self._queue_commit(inflight.batch)
        if commit:
            self._commit_pending()
        self.totals.processed += inflight.records
        return BatchReport(inflight.records, written.stored, written.duplicates, dead)

    def _abandon(
        self, failure: _BatchFailedError, batch: Mapping[TopicPartition, Sequence[Any]] | None
    ) -> None:
        """Nothing in flight or just polled is committed: rewind to the oldest of it all."""
        positions = rewind_positions(batch) if batch else {}
        failing = sum(len(records) for records in batch.values()) if batch else 0
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            futures.wait([inflight.write])  # a scan failure can leave it running
            failing += inflight.records
            for tp, offset in rewind_positions(inflight.batch).items():
                positions[tp] = min(offset, positions.get(tp, offset))
        self._failing_records = failing
        if failure.kind == "dlq":
            # An acknowledgement may have been lost: read the DLQ tail again before
            # these partitions' dead letters are sent again.
            self._unscanned.update(positions)
        self._retry_later(positions, failure)

    def _scan_dlq(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """First records of a newly assigned partition: learn what the DLQ already holds."""
        for tp in [tp for tp in batch if tp in self._unscanned]:
            first = batch[tp][0].offset
            try:
                if self._reader is None:
                    self._reader = self._reader_factory()
                found = scan_already_dead_lettered(
                    self._reader, self._settings.kafka.dlq_topic, tp, first
                )
            except KafkaError as exc:
                self._close_reader()
                raise _BatchFailedError("dlq", f"cannot read the DLQ: {exc!r}") from exc
            self._ledger.replace(tp, found)
            self._unscanned.discard(tp)
            if found:
                log.info(
                    "dead letters already delivered by a previous run will be skipped",
                    extra={"partition": tp.partition, "count": len(found)},
                )

    def _write(self, valid: list[IncomingEvent], sources: list[Any]) -> _Written:
        if not valid:
            return _Written(0, 0, [])
        started = time.perf_counter()
        try:
            written = write_isolating(self._store, valid, sources)
        except StoreUnavailableError as exc:
            self.health.store_ok = False
            raise _BatchFailedError("store", f"store write failed: {exc}") from exc
        self._metrics.batch_write_seconds.observe(time.perf_counter() - started)
        self.health.store_ok = True
        if written.refused:
            log.warning(
                "the store refused %d row(s) of a batch; they go to the DLQ (%s)",
                len(written.refused),
                written.refused[0].detail,
            )
        self._metrics.stored.inc(written.stored)
        self._metrics.duplicates.inc(written.duplicates)
        # Counted when written, not when committed: rows of a batch that is written and
        # then rewound (e.g. its dead letters failed) are stored, and come back as duplicates.
        self.totals.stored += written.stored
        self.totals.duplicates += written.duplicates
        return written

    def _deliver_dead_letters(self, letters: list[DeadLetter]) -> int:
        """Deliver (3 attempts in place); return how many this call got acknowledged.

        Each acknowledged letter is counted as soon as it is known, even if the batch
        then fails; a retry first re-reads the DLQ tail for acknowledgements it lost.
        """
        if not letters:
            return 0
        delivered, truncated_before = 0, self._sender.truncated
        try:
            for attempt in range(1, DLQ_ATTEMPTS_IN_PLACE + 1):
                try:
                    if attempt > 1:
                        delivered += self._count_delivered(self._learn_from_dlq(letters))
                    delivered += self._count_delivered(self._sender.deliver(letters, self._ledger))
                    return delivered
                except DeadLetterDeliveryError as exc:
                    delivered += self._count_delivered(exc.acknowledged)
                    self._dlq_attempt_failed(attempt, exc)
                except KafkaError as exc:  # reading the DLQ tail failed
                    self._close_reader()
                    self._dlq_attempt_failed(attempt, exc)
        finally:
            self._metrics.dead_letters_truncated.inc(self._sender.truncated - truncated_before)
        raise AssertionError("unreachable: the last failed attempt raises")

    def _dlq_attempt_failed(self, attempt: int, exc: Exception) -> None:
        """Count and log; raise _BatchFailedError after the last attempt or on stop."""
        self._metrics.errors.labels(kind="dlq").inc()
        log.warning("dead letters not delivered (attempt %d): %s", attempt, exc)
        if attempt == DLQ_ATTEMPTS_IN_PLACE or self._stop.wait(self._backoff.next_delay()):
            raise _BatchFailedError("dlq", str(exc), counted=True) from exc

    def _count_delivered(self, letters: Sequence[DeadLetter]) -> int:
        for letter in letters:
            self._metrics.dead_letters.labels(reason=letter.reason).inc()
        self.totals.dead_letters += len(letters)
        return len(letters)

    def _learn_from_dlq(self, letters: Sequence[DeadLetter]) -> list[DeadLetter]:
        """Letters the DLQ holds although their acknowledgement was lost: into the ledger."""
        pending: dict[TopicPartition, list[DeadLetter]] = {}
        for letter in letters:
            if not self._is_sent(letter):
                pending.setdefault(TopicPartition(letter.topic, letter.partition), []).append(
                    letter
                )
        found: list[DeadLetter] = []
        for tp, group in pending.items():
            if self._reader is None:
                self._reader = self._reader_factory()
            lowest = min(letter.offset for letter in group)
            there = scan_already_dead_lettered(
                self._reader, self._settings.kafka.dlq_topic, tp, lowest
            )
            for letter in group:
                if letter.offset in there:
                    self._ledger.record(tp, letter.offset)
                    found.append(letter)
        return found

    def _is_sent(self, letter: DeadLetter) -> bool:
        return self._ledger.already_sent(
            TopicPartition(letter.topic, letter.partition), letter.offset
        )

    def _retry_later(
        self, positions: Mapping[TopicPartition, int], failure: _BatchFailedError
    ) -> None:
        """Seek back so the records are processed again, after a pause."""
        if not failure.counted:
            self._metrics.errors.labels(kind=failure.kind).inc()
        self.health.last_error = failure.message
        log.warning("batch not committed, will retry: %s", failure.message)
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, offset in positions.items():
            if tp in assigned:
                self._consumer.seek(tp, offset)
        self._stop.wait(self._backoff.next_delay())

    def _queue_commit(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        assert self._consumer is not None
        self._pending_commit.update(commit_offsets(batch, self._consumer.assignment()))

    def _commit_pending(self) -> None:
        """Commit every durable-but-uncommitted offset (retried after a failed commit)."""
        if not self._pending_commit or self._consumer is None:
            return
        assigned = self._consumer.assignment()
        offsets = {tp: om for tp, om in self._pending_commit.items() if tp in assigned}
        self._pending_commit = offsets
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets)
        except CommitFailedError as exc:
            # Partitions moved to another member: their records are re-delivered there.
            self._metrics.errors.labels(kind="commit").inc()
            log.warning("commit rejected after a rebalance: %s", exc)
            self._pending_commit = {}
            return
        except KafkaError as exc:
            self._metrics.errors.labels(kind="commit").inc()
            self.health.last_error = f"commit failed: {exc!r}"
            log.warning("commit failed, will retry: %r", exc)
            return
        self.health.contact()
        for tp, om in offsets.items():
            self._ledger.committed(tp, om.offset)
        self._pending_commit = {}
        self._metrics.last_batch_timestamp.set(time.time())

    # --- gauges ----------------------------------------------------------------------------

    def _refresh_gauges(self, now: float) -> None:
        if now >= self._next_lag_at and self._consumer is not None:
            self._next_lag_at = now + LAG_INTERVAL_S
            self._update_lag()
        if now >= self._next_stats_at:
            self._next_stats_at = now + STORE_STATS_INTERVAL_S
            self.update_store_gauges()

    def _update_lag(self) -> None:
        assert self._consumer is not None
        assigned = list(self._consumer.assignment())
        self.health.idle_member = self.health.joined and not assigned
        if not assigned:
            return
        try:
            ends = self._consumer.end_offsets(assigned, timeout_ms=2_000)
            positions = {tp: self._consumer.position(tp, timeout_ms=2_000) for tp in assigned}
        except KafkaError as exc:
            self._metrics.errors.labels(kind="broker").inc()
            self.health.last_error = f"cannot read end offsets: {exc!r}"
            log.warning("cannot read end offsets for the lag gauge: %r", exc)
            return
        self.health.contact()  # the broker answered: the probe /readyz relies on
        known = {tp: pos for tp, pos in positions.items() if pos is not None}
        for partition, behind in lag(ends, known).items():
            self._metrics.consumer_lag.labels(partition=str(partition)).set(behind)
            self._lag_partitions.add(partition)

    def update_store_gauges(self) -> None:
        """Store size and event count (a count(*) on large stores, so only every 30 s)."""
        try:
            stats = self._store.stats()
        except StoreUnavailableError as exc:
            self.health.store_ok = False
            self._metrics.errors.labels(kind="store").inc()
            log.warning("cannot read store statistics: %s", exc)
            return
        self.health.store_ok = True
        self._metrics.store_events.set(stats.events)
        if stats.size_bytes is not None:
            self._metrics.store_size_bytes.set(stats.size_bytes)

    # --- failures and shutdown -----------------------------------------------------------

    def _broker_failed(self, what: str, exc: Exception) -> None:
        self.health.broker_ok = False
        self.health.last_error = f"{what}: {exc!r}"
        self._metrics.errors.labels(kind="broker").inc()
        delay = self._backoff.next_delay()
        log.warning("%s: %r; retrying in %.1f s", what, exc, delay)
        self._stop.wait(delay)

    def _drain_inflight(self, why: str) -> None:
        """Finish the batch in flight without committing (kafka-python refuses a blocking
        commit inside a rebalance callback): its dead letters reach the DLQ before another
        member scans it, and whoever owns the partitions next re-reads the uncommitted
        records, which the store skips as duplicates."""
        if self._inflight is None:
            return
        try:
            self._finish_inflight(commit=False)
        except _BatchFailedError as failure:
            self._inflight = None
            if not failure.counted:
                self._metrics.errors.labels(kind=failure.kind).inc()
            log.warning("%s: batch in flight dropped, will be re-read: %s", why, failure.message)

    def _close_consumer(self) -> None:
        self._drain_inflight("consumer closing")
        consumer, self._consumer = self._consumer, None
        self.health.joined = False
        self._unscanned.clear()
        self._pending_commit.clear()
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=5_000)
            except KafkaError as exc:
                log.warning("closing the consumer failed: %r", exc)

    def _finish_or_abandon_quietly(self) -> None:
        records = self._inflight_records()
        try:
            self._finish_inflight()
        except _BatchFailedError as failure:
            self._inflight = None
            self._failing_records = max(self._failing_records, records)
            if not failure.counted:
                self._metrics.errors.labels(kind=failure.kind).inc()
            log.warning("stopping: last batch not committed, will be re-read: %s", failure.message)

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close(autocommit=False, timeout_ms=2_000)
            except KafkaError as exc:
                log.warning("closing the DLQ reader failed: %r", exc)

    def _shutdown(self) -> None:
        if self._consumer is not None:
            self._finish_or_abandon_quietly()
        self._writer.shutdown(wait=True)
        self._commit_pending()
        self._close_consumer()
        self._close_reader()
        try:
            self._sender.close()
        except KafkaError as exc:
            self._metrics.errors.labels(kind="dlq").inc()
            log.warning("closing the DLQ producer failed: %r", exc)
        self.update_store_gauges()
        log.info(
            "ingest stopped",
            extra={
                "processed": self.totals.processed,
                "stored": self.totals.stored,
                "duplicates": self.totals.duplicates,
                "dead_letters": self.totals.dead_letters,
            },
        )


class _BatchFailedError(Exception):
    """A batch could not be made durable; `kind` names the error metric label."""

    def __init__(self, kind: str, message: str, counted: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.counted = counted
