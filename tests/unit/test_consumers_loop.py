"""The ingest loop's ordering guarantees, with fake Kafka clients and a fake store.

Fakes are fine here: this tests the loop's logic (what is committed when),
while tests/integration runs the same loop against the real broker and databases.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from dispatchloop.consumers.deadletter import source_of
from dispatchloop.consumers.loop import IngestHealth, IngestLoop
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay.base import (
    IncomingEvent,
    ReplayStore,
    StoredEvent,
    StoreRejectedError,
    StoreStats,
    StoreUnavailableError,
    TimeWindow,
    WriteResult,
)
from dispatchloop.settings import Settings
from dispatchloop.testing.events import encode, event_stream

TOPIC = "events"
TP = TopicPartition(TOPIC, 0)
ALL = TimeWindow()


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class FakeConsumer:
    def __init__(self, values: list[bytes], fail_commits: int = 0) -> None:
        self.records = [Record(TOPIC, 0, i, b"k", v, []) for i, v in enumerate(values)]
        self.next_offset = 0
        self.committed: list[int] = []
        self.seeks: list[int] = []
        self.listener: Any = None
        self.fail_commits = fail_commits
        self.polls = 0
        self.revoke_on_poll = 0
        self.after_revoke: list[int] = []
        self.closed = False

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        self.polls += 1
        if self.listener is not None and self.polls == self.revoke_on_poll:
            # A rebalance inside poll: partitions go, come back, reading resumes at the commit.
            self.listener.on_partitions_revoked([TP])
            self.after_revoke.append(len(self.committed))
            self.next_offset = self.committed[-1] if self.committed else 0
            self.listener.on_partitions_assigned([TP])
        if self.listener is not None and self.polls == 1:
            self.listener.on_partitions_assigned([TP])
        chunk = self.records[self.next_offset : self.next_offset + min(max_records, 4)]
        self.next_offset += len(chunk)
        return {TP: chunk} if chunk else {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)
        self.next_offset = offset

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise CommitFailedError("rebalanced")
        self.committed.append(offsets[TP].offset)

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        return {TP: len(self.records)}

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return self.next_offset

    def close(self, autocommit: bool, timeout_ms: int) -> None:
        self.closed = True


class FakeFuture:
    def __init__(self, ok: bool, exception: Exception | None = None) -> None:
        self.is_done = True
        self.ok = ok
        self.exception = None if ok else exception or KafkaTimeoutError("no ack")

    def succeeded(self) -> bool:
        return self.ok


class FakeDlq:
    """The DLQ topic (one partition) with a producer that fails the first `failures` flushes.

    The first producer can also misbehave per send: acknowledge only the first
    `acks_then_fail` sends, or write every record but lose its acknowledgement
    (`lose_acks`); `refuse_above` bytes makes send() raise as kafka-python does.
    """

    def __init__(
        self,
        failures: int = 0,
        acks_then_fail: int | None = None,
        lose_acks: bool = False,
        refuse_above: int | None = None,
    ) -> None:
        self.records: list[Record] = []
        self.failures = failures
        self.producers_made = 0
        self.acks_then_fail = acks_then_fail
        self.lose_acks = lose_acks
        self.refuse_above = refuse_above

    def producer(self) -> Any:
        self.producers_made += 1
        return _Producer(self)

    def reader(self) -> Any:
        return _Reader(self)


class _Producer:
    def __init__(self, dlq: FakeDlq) -> None:
        self.dlq = dlq
        self.failing = dlq.failures > 0
        self.flush_times_out = False
        if self.failing:
            dlq.failures -= 1

    def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def send(self, topic: str, value: bytes, key: bytes, headers: Any, partition: int) -> Any:
        dlq = self.dlq
        if dlq.refuse_above is not None and len(value) > dlq.refuse_above:
            raise MessageSizeTooLargeError("larger than max_request_size")
        if self.failing:
            return FakeFuture(False)
        if dlq.acks_then_fail is not None:
            if dlq.acks_then_fail == 0:
                dlq.acks_then_fail = None  # only the first producer misbehaves
                self.flush_times_out = True  # as kafka-python's flush() does
                pending = FakeFuture(False)
                pending.is_done = False
                return pending
            dlq.acks_then_fail -= 1
        dlq.records.append(Record(topic, 0, len(dlq.records), key, value, headers))
        if dlq.lose_acks:
            dlq.lose_acks = False
            return FakeFuture(False)
        return FakeFuture(True)

    def flush(self, timeout: float) -> None:
        if self.flush_times_out:
            raise KafkaTimeoutError("Timeout after waiting for 30 secs.")

    def close(self, timeout: float) -> None:
        pass


class _Reader:
    def __init__(self, dlq: FakeDlq) -> None:
        self.dlq = dlq
        self.at = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assign(self, tps: Any) -> None:
        pass

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tps[0]: 0}

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tps[0]: len(self.dlq.records)}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        chunk = self.dlq.records[self.at :]
        self.at += len(chunk)
        return {TopicPartition("events.dlq", 0): chunk} if chunk else {}

    def close(self, autocommit: bool, timeout_ms: int) -> None:
        pass


class FakeStore(ReplayStore):
    def __init__(self, failures: int = 0) -> None:
        self.rows: dict[str, bytes] = {}
        self.failures = failures

    def write_batch(self, batch: Sequence[IncomingEvent]) -> WriteResult:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("disk gone")
        inserted = 0
        for item in batch:
            if str(item.event.event_id) not in self.rows:
                self.rows[str(item.event.event_id)] = item.raw
                inserted += 1
        return WriteResult(inserted, len(batch) - inserted)

    def stats(self) -> StoreStats:
        return StoreStats(len(self.rows), 0, None, None, 1234)

    def count_events(self, window: TimeWindow = ALL) -> int:
        return len(self.rows)

    def iter_events(self, window: TimeWindow = ALL, batch_size: int = 1_000) -> Any:
        return iter(())

    def tail_start(self, last: int) -> int:
        return 0

    def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        return []

    def iter_events_after(self, position: int, batch_size: int = 1_000) -> Any:
        return iter(())

    def position_before(self, decided_since: datetime) -> int:
        return 0

    def episode_ids(self, window: TimeWindow = ALL) -> list[str]:
        return []

    def episode(self, episode_id: str) -> list[DispatchOutcomeEvent]:
        return []

    def raw_event(self, event_id: str) -> bytes | None:
        return self.rows.get(event_id)

    def apply_retention(
        self, now: datetime, max_age: timedelta | None, max_events: int | None
    ) -> int:
        return 0

    def close(self) -> None:
        pass


def values(n_valid: int, bad_at: Sequence[int]) -> list[bytes]:
    out = [encode(e) for e in event_stream(3, n_valid)]
    for index in sorted(bad_at):
        out.insert(index, b'{"schema_version": 1, "broken')
    return out


def make_loop(
    consumer: FakeConsumer,
    store: ReplayStore,
    dlq: FakeDlq,
    registry: CollectorRegistry,
    **ingest: Any,
) -> IngestLoop:
    settings = Settings(
        kafka={"topic": TOPIC, "dlq_topic": "events.dlq"},
        ingest={"reconnect_backoff_initial_s": 0.001, "reconnect_backoff_max_s": 0.002, **ingest},
    )

    def consumer_factory(listener: Any) -> FakeConsumer:
        consumer.listener = listener
        return consumer

    return IngestLoop(
        settings,
        store,
        IngestMetrics(registry),
        consumer_factory=consumer_factory,
        producer_factory=dlq.producer,
        reader_factory=dlq.reader,
        rng=np.random.default_rng(0),
    )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_undeliverable_dead_letter_is_never_committed_past_then_delivered_once() -> None:
    consumer = FakeConsumer(values(6, bad_at=[2]))
    dlq, store, registry = FakeDlq(failures=4), FakeStore(), CollectorRegistry()
    loop = make_loop(consumer, store, dlq, registry)
    totals = loop.run(max_events=7)
    # Batch one (offsets 0-3) holds the bad record: 3 in-place attempts fail, the batch is
    # rewound, the 4th producer fails again, the 5th delivers.
    assert consumer.seeks[:1] == [0]
    assert consumer.committed[0] == 4  # the first commit comes only after delivery
    assert consumer.committed[-1] == 7
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, 2)]
    assert dlq.records[0].value == b'{"schema_version": 1, "broken'
    assert len(store.rows) == 6 and totals.dead_letters == 1
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="dlq") == 4
    assert sample(registry, "dispatchloop_dead_letters_total", reason="invalid_json") == 1
    assert dlq.producers_made == 5  # re-created after every failure


def test_store_failure_rewinds_without_commit_and_counts_the_error() -> None:
    consumer = FakeConsumer(values(8, bad_at=[]))
    dlq, store, registry = FakeDlq(), FakeStore(failures=2), CollectorRegistry()
    loop = make_loop(consumer, store, dlq, registry)
    loop.run(max_events=8)
    assert consumer.seeks == [0, 0]
    assert consumer.committed == [4, 8]
    assert len(store.rows) == 8
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="store") == 2
    assert sample(registry, "dispatchloop_events_stored_total") == 8
    assert sample(registry, "dispatchloop_events_duplicate_total") == 0


def test_dead_letters_a_previous_run_delivered_are_not_sent_again() -> None:
    raw = values(3, bad_at=[1])
    dlq = FakeDlq()
    first = FakeConsumer(raw)
    make_loop(first, FakeStore(), dlq, CollectorRegistry()).run(max_events=4)
    assert len(dlq.records) == 1
    # A crash after the DLQ ack but before the commit: the next run starts at offset 0 again.
    again, registry = FakeConsumer(raw), CollectorRegistry()
    make_loop(again, FakeStore(), dlq, registry).run(max_events=4)
    assert len(dlq.records) == 1
    assert sample(registry, "dispatchloop_dead_letters_total", reason="invalid_json") == 0
    assert again.committed == [4]


def test_rejected_commit_is_counted_and_the_loop_carries_on() -> None:
    consumer = FakeConsumer(values(8, bad_at=[]), fail_commits=1)
    registry = CollectorRegistry()
    totals = make_loop(consumer, FakeStore(), FakeDlq(), registry).run(max_events=8)
    assert totals.processed == 8
    assert consumer.committed == [8]
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="commit") == 1


def test_max_events_stops_exactly_and_closes_the_consumer() -> None:
    consumer = FakeConsumer(values(10, bad_at=[]))
    totals = make_loop(consumer, FakeStore(), FakeDlq(), CollectorRegistry()).run(max_events=6)
    assert totals.processed == 6 and consumer.committed[-1] == 6 and consumer.closed


def test_unreachable_broker_is_retried_with_backoff() -> None:
    consumer = FakeConsumer(values(2, bad_at=[]))
    attempts = []

    def flaky(listener: Any) -> FakeConsumer:
        attempts.append(1)
        if len(attempts) < 3:
            raise KafkaTimeoutError("Unable to bootstrap")
        consumer.listener = listener
        return consumer

    registry = CollectorRegistry()
    loop = make_loop(consumer, FakeStore(), FakeDlq(), registry)
    loop._consumer_factory = flaky
    assert loop.run(max_events=2).processed == 2
    assert len(attempts) == 3
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="broker") == 2
    ready, detail = loop.health.readiness()
    assert detail["store_reachable"] and not ready  # closed after the run: no longer joined


@pytest.mark.parametrize("letters", [0, 2])
def test_every_delivered_letter_names_reason_and_source(letters: int) -> None:
    consumer = FakeConsumer(values(4, bad_at=list(range(letters))))
    dlq = FakeDlq()
    make_loop(consumer, FakeStore(), dlq, CollectorRegistry()).run(max_events=4 + letters)
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, i) for i in range(letters)]
    for record in dlq.records:
        assert dict(record.headers)["dlq.reason"] == b"invalid_json"
        assert [name for name, _ in record.headers] == [
            "dlq.reason",
            "dlq.detail",
            "dlq.source.topic",
            "dlq.source.partition",
            "dlq.source.offset",
        ]


def test_idle_exit_does_not_fire_while_a_batch_keeps_failing() -> None:
    consumer = FakeConsumer(values(4, bad_at=[]))
    store = FakeStore(failures=400)
    loop = make_loop(consumer, store, FakeDlq(), CollectorRegistry())
    totals = loop.run(idle_exit_s=0.3)
    # The store failed 400 times (backoff 1-2 ms each: well over 0.3 s), then went through.
    assert store.failures == 0 and totals.processed == 4
    assert consumer.committed == [4]


def test_rebalance_finishes_the_batch_in_flight_before_partitions_move() -> None:
    consumer = FakeConsumer(values(8, bad_at=[1]))
    consumer.revoke_on_poll = 2  # batch one (offsets 0-3) is in flight when this poll revokes
    dlq, store, registry = FakeDlq(), FakeStore(), CollectorRegistry()
    delivered_in_callback: list[int] = []
    original_revoked = IngestLoop.partitions_revoked

    def spy(self: IngestLoop, revoked: list[TopicPartition]) -> None:
        original_revoked(self, revoked)
        delivered_in_callback.append(len(dlq.records))

    loop = make_loop(consumer, store, dlq, registry)
    loop.partitions_revoked = spy.__get__(loop)  # type: ignore[method-assign]
    totals = loop.run(max_events=9 + 4)
    assert delivered_in_callback == [1] and consumer.after_revoke == [0]
    # The in-flight batch was written and its dead letter delivered inside the callback,
    # but not committed there: it is read again and the store and ledger skip it.
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, 1)]
    assert len(store.rows) == 8
    assert consumer.committed[-1] == 9
    assert totals.duplicates == 3


# --- every failure is the record's or the infrastructure's -------------------------------


def test_a_record_that_makes_screening_raise_is_dead_lettered_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dispatchloop.consumers.loop as loop_module

    real = loop_module.screen_outcome

    def explosive(raw: bytes | None, max_bytes: int) -> Any:
        if raw == b"POISON":
            raise RecursionError("maximum recursion depth exceeded")
        return real(raw, max_bytes)

    monkeypatch.setattr(loop_module, "screen_outcome", explosive)
    raw = values(6, bad_at=[])
    raw.insert(3, b"POISON")
    consumer, dlq, store, registry = FakeConsumer(raw), FakeDlq(), FakeStore(), CollectorRegistry()
    totals = make_loop(consumer, store, dlq, registry).run(max_events=7)
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, 3)]
    headers = dict(dlq.records[0].headers)
    assert headers["dlq.reason"] == b"unprocessable"
    assert headers["dlq.detail"].startswith(b"RecursionError")
    assert len(store.rows) == 6 and consumer.committed[-1] == 7 and consumer.seeks == []
    assert totals.unresolved == 0
    assert sample(registry, "dispatchloop_dead_letters_total", reason="unprocessable") == 1


class RefusingStore(FakeStore):
    """Refuses (StoreRejectedError) any batch that holds one of the `refused` raw values."""

    def __init__(self, refused: set[bytes]) -> None:
        super().__init__()
        self.refused = refused
        self.writes = 0

    def write_batch(self, batch: Sequence[IncomingEvent]) -> WriteResult:
        self.writes += 1
        if any(item.raw in self.refused for item in batch):
            raise StoreRejectedError("DataError: invalid byte sequence for encoding UTF8: 0x00")
        return super().write_batch(batch)


def test_rows_the_store_refuses_are_isolated_and_dead_lettered_the_rest_stored() -> None:
    raw = values(8, bad_at=[])
    store = RefusingStore({raw[1], raw[6]})
    consumer, dlq, registry = FakeConsumer(raw), FakeDlq(), CollectorRegistry()
    totals = make_loop(consumer, store, dlq, registry).run(max_events=8)
    assert sorted(source_of(r.headers) for r in dlq.records) == [(TOPIC, 0, 1), (TOPIC, 0, 6)]
    assert {dict(r.headers)["dlq.reason"] for r in dlq.records} == {b"unstorable"}
    assert all(b"DataError" in dict(r.headers)["dlq.detail"] for r in dlq.records)
    assert [r.value for r in dlq.records] == [raw[1], raw[6]]
    assert set(store.rows.values()) == set(raw) - {raw[1], raw[6]}
    assert consumer.committed[-1] == 8 and consumer.seeks == []
    assert totals.stored == 6 and totals.dead_letters == 2
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="store") == 0


def test_dead_letters_acknowledged_before_a_failure_are_not_sent_again() -> None:
    consumer = FakeConsumer(values(2, bad_at=[0, 1]))
    dlq, registry = FakeDlq(acks_then_fail=1), CollectorRegistry()
    totals = make_loop(consumer, FakeStore(), dlq, registry).run(max_events=4)
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, 0), (TOPIC, 0, 1)]
    assert totals.dead_letters == 2
    assert sample(registry, "dispatchloop_dead_letters_total", reason="invalid_json") == 2
    assert sample(registry, "dispatchloop_ingest_errors_total", kind="dlq") == 1


def test_a_dead_letter_whose_acknowledgement_was_lost_is_found_in_the_dlq_not_resent() -> None:
    consumer = FakeConsumer(values(3, bad_at=[1]))
    dlq = FakeDlq(lose_acks=True)
    totals = make_loop(consumer, FakeStore(), dlq, CollectorRegistry()).run(max_events=4)
    assert [source_of(r.headers) for r in dlq.records] == [(TOPIC, 0, 1)]
    assert totals.dead_letters == 1 and consumer.committed[-1] == 4


@pytest.mark.parametrize("refused_by", ["client", "size limit"])
def test_a_dead_letter_too_large_for_the_dlq_goes_out_truncated(refused_by: str) -> None:
    huge = b'{"schema_version": 1, "truncated' + b"x" * 20_000
    raw = values(3, bad_at=[])
    raw.insert(1, huge)
    consumer = FakeConsumer(raw)
    dlq = FakeDlq(refuse_above=10_000 if refused_by == "client" else None)
    limit = {"dlq_max_record_bytes": 1_000_000 if refused_by == "client" else 8_192}
    registry = CollectorRegistry()
    loop = make_loop(
        consumer, FakeStore(), dlq, registry, dlq_truncated_prefix_bytes=1_024, **limit
    )
    totals = loop.run(max_events=4)
    assert len(dlq.records) == 1 and totals.dead_letters == 1
    record = dlq.records[0]
    headers = dict(record.headers)
    assert record.value == huge[:1_024]
    assert headers["dlq.truncated"] == b"true"
    assert headers["dlq.original.size"] == str(len(huge)).encode()
    assert headers["dlq.original.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert headers["dlq.reason"] == b"invalid_json"
    assert consumer.committed[-1] == 4
    assert sample(registry, "dispatchloop_dead_letters_truncated_total") == 1


def test_stopping_while_a_batch_keeps_failing_reports_its_records_unresolved() -> None:
    consumer = FakeConsumer(values(4, bad_at=[]))
    store = FakeStore(failures=10**6)
    loop = make_loop(consumer, store, FakeDlq(), CollectorRegistry())
    original = store.write_batch

    def failing_then_stop(batch: Sequence[IncomingEvent]) -> WriteResult:
        if store.failures < 10**6 - 3:
            loop.request_stop()
        return original(batch)

    store.write_batch = failing_then_stop  # type: ignore[method-assign]
    totals = loop.run(idle_exit_s=60)
    assert totals.unresolved == 4 and totals.processed == 0
    assert consumer.committed == []


def test_readiness_needs_recent_polls_and_proven_broker_contact() -> None:
    now = [1_000.0]
    health = IngestHealth(stale_after_s=20.0, clock=lambda: now[0])
    assert health.readiness()[0] is False  # not joined
    health.joined = True
    health.polled(records=True)
    assert health.readiness() == (True, health.readiness()[1])
    now[0] += 25.0
    health.polled(records=False)  # an empty poll proves nothing: refused connections look alike
    ready, detail = health.readiness()
    assert not ready and not detail["broker_reachable"]
    assert any("no answer from the broker for 25 s" in r for r in detail["reasons"])
    assert health.unreachable_seconds() == 25.0
    health.contact()  # e.g. the offsets probe answered
    assert health.readiness()[0] is True and health.unreachable_seconds() == 0.0
    now[0] += 21.0
    health.contact()
    ready, detail = health.readiness()
    assert not ready and detail["reasons"] == ["no poll completed for over 20 s"]
