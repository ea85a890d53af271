"""Dead-letter headers, the ledger and the DLQ tail scan (the scan against a fake reader)."""

from __future__ import annotations

from typing import Any, NamedTuple

from kafka.structs import TopicPartition

from dispatchloop.consumers.deadletter import (
    DeadLetter,
    DeadLetterLedger,
    dlq_headers,
    dlq_partition,
    scan_already_dead_lettered,
    source_of,
)

LETTER = DeadLetter("events", 2, 41, b"ep-1", b"{bad", "invalid_json", "line 1: EOF")


def test_headers_carry_reason_detail_and_source_as_bytes() -> None:
    headers = dict(dlq_headers(LETTER))
    assert headers == {
        "dlq.reason": b"invalid_json",
        "dlq.detail": b"line 1: EOF",
        "dlq.source.topic": b"events",
        "dlq.source.partition": b"2",
        "dlq.source.offset": b"41",
    }


def test_detail_is_truncated_and_non_ascii_survives() -> None:
    letter = LETTER._replace(detail="é" * 5_000)
    detail = dict(dlq_headers(letter))["dlq.detail"].decode()
    assert detail == "é" * 1_000


def test_source_round_trips_and_missing_headers_give_none() -> None:
    assert source_of(dlq_headers(LETTER)) == ("events", 2, 41)
    assert source_of([("dlq.reason", b"x")]) is None
    assert source_of([("dlq.source.topic", b"t"), ("dlq.source.partition", b"x")]) is None


def test_dlq_partition_maps_each_source_partition_to_one_dlq_partition() -> None:
    assert [dlq_partition(p, 3) for p in range(6)] == [0, 1, 2, 0, 1, 2]
    assert dlq_partition(5, 1) == 0


def test_ledger_remembers_until_committed_and_forgets_on_revoke() -> None:
    ledger = DeadLetterLedger()
    tp = TopicPartition("events", 0)
    ledger.record(tp, 10)
    ledger.record(tp, 20)
    assert ledger.already_sent(tp, 10) and not ledger.already_sent(tp, 11)
    ledger.committed(tp, 15)
    assert not ledger.already_sent(tp, 10) and ledger.already_sent(tp, 20)
    ledger.drop(tp)
    assert ledger.size() == 0


class FakeRecord(NamedTuple):
    offset: int
    headers: list[tuple[str, bytes]]


class FakeReader:
    """A DLQ partition as a list; end_offsets reads low like tansu's (base of last batch)."""

    def __init__(self, records: list[FakeRecord], partitions: int = 1, low_end: int = 0):
        self.records = records
        self.partitions = partitions
        self.low_end = low_end
        self.position = 0
        self.polls = 0

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return set(range(self.partitions))

    def assign(self, _tps: list[TopicPartition]) -> None:
        pass

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tps[0]: 0}

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tps[0]: len(self.records) - self.low_end}

    def seek(self, _tp: TopicPartition, offset: int) -> None:
        self.position = offset

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        chunk = self.records[self.position : self.position + 3]
        self.position += len(chunk)
        return {TopicPartition("dlq", 0): chunk} if chunk else {}


def dead(topic: str, partition: int, offset: int, at: int) -> FakeRecord:
    letter = LETTER._replace(topic=topic, partition=partition, offset=offset)
    return FakeRecord(at, dlq_headers(letter))


def test_scan_finds_offsets_at_or_above_committed_and_stops_at_older() -> None:
    source = TopicPartition("events", 0)
    offsets = [3, 8, 15, 30, 31, 44]  # source offsets of partition 0, in DLQ order
    records = []
    for index, offset in enumerate(offsets):
        records.append(dead("events", 0, offset, len(records)))
        if index % 2:
            records.append(dead("events", 1, 1000 + index, len(records)))  # other partition
    reader = FakeReader(records, low_end=2)
    found = scan_already_dead_lettered(reader, "dlq", source, 30, chunk=2)
    assert found == {30, 31, 44}


def test_scan_of_empty_dlq_or_unknown_topic_finds_nothing() -> None:
    source = TopicPartition("events", 0)
    assert scan_already_dead_lettered(FakeReader([]), "dlq", source, 0) == set()
    assert scan_already_dead_lettered(FakeReader([], partitions=0), "dlq", source, 0) == set()


def test_scan_reads_to_the_beginning_when_nothing_older_exists() -> None:
    source = TopicPartition("events", 0)
    records = [dead("events", 0, offset, at) for at, offset in enumerate(range(100, 110))]
    found = scan_already_dead_lettered(FakeReader(records), "dlq", source, 100, chunk=4)
    assert found == set(range(100, 110))
