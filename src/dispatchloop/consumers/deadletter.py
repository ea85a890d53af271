"""Dead letters: records that are not valid events go to the DLQ topic, exactly once.

A dead letter carries the original bytes and key plus headers saying why and
where it came from (DESIGN.md). Delivery must be exactly-once even though the
consumer is at-least-once: a crash after the DLQ acknowledged a record but
before the offset commit re-delivers that record. Two rules make that safe:

- Source partition p always dead-letters into DLQ partition p mod n, and offsets
  are committed only after every dead letter of the batch is acknowledged. So in
  a DLQ partition, all dead letters of p at offsets >= the committed offset c come
  after those below c.
- On (re)assignment of p, `scan_already_dead_lettered` reads that DLQ partition
  backwards from its end until it meets a dead letter of p below c: what it saw
  at or above c was delivered by a previous run and is skipped (the ledger).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from kafka.errors import KafkaError
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)

HEADER_REASON = "dlq.reason"
HEADER_DETAIL = "dlq.detail"
HEADER_SOURCE_TOPIC = "dlq.source.topic"
HEADER_SOURCE_PARTITION = "dlq.source.partition"
HEADER_SOURCE_OFFSET = "dlq.source.offset"
MAX_DETAIL_CHARS = 1_000


class DeadLetter(NamedTuple):
    """One rejected record: where it was, its original key and bytes, and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


class DeadLetterDeliveryError(Exception):
    """Some dead letters of a batch were not acknowledged by the DLQ topic."""


def dlq_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The DLQ record headers (DESIGN.md): reason, detail and source coordinates, as bytes."""
    return [
        (HEADER_REASON, letter.reason.encode()),
        (HEADER_DETAIL, letter.detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, letter.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(letter.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(letter.offset).encode()),
    ]


def source_of(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int, int] | None:
    """(topic, partition, offset) a DLQ record came from, or None if its headers lack them."""
    found = {name: value for name, value in headers if value is not None}
    try:
        return (
            found[HEADER_SOURCE_TOPIC].decode(),
            int(found[HEADER_SOURCE_PARTITION]),
            int(found[HEADER_SOURCE_OFFSET]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def dlq_partition(source_partition: int, dlq_partitions: int) -> int:
    """The DLQ partition that receives every dead letter of one source partition."""
    return source_partition % dlq_partitions


class DeadLetterLedger:
    """Source offsets already in the DLQ but not yet committed, per source partition."""

    def __init__(self) -> None:
        self._sent: dict[TopicPartition, set[int]] = {}

    def already_sent(self, tp: TopicPartition, offset: int) -> bool:
        sent = self._sent.get(tp)
        return sent is not None and offset in sent

    def record(self, tp: TopicPartition, offset: int) -> None:
        self._sent.setdefault(tp, set()).add(offset)

    def replace(self, tp: TopicPartition, offsets: set[int]) -> None:
        """Take over what a scan of the DLQ found for a newly assigned partition."""
        self._sent[tp] = set(offsets)

    def committed(self, tp: TopicPartition, next_offset: int) -> None:
        """Offsets below the committed one are never re-delivered: forget them."""
        sent = self._sent.get(tp)
        if sent:
            self._sent[tp] = {offset for offset in sent if offset >= next_offset}

    def drop(self, tp: TopicPartition) -> None:
        self._sent.pop(tp, None)

    def size(self) -> int:
        return sum(len(offsets) for offsets in self._sent.values())


ProducerFactory = Callable[[], Any]


class DeadLetterSender:
    """Sends a batch's dead letters with acks=all and waits for every acknowledgement.

    The producer is created lazily (a healthy stream never needs one) and
    re-created after any delivery error: tansu, and sometimes Kafka, reject an
    idempotent producer that lived through a broker restart until it is new.
    """

    def __init__(self, producer_factory: ProducerFactory, dlq_topic: str, timeout_s: float):
        self._factory = producer_factory
        self._topic = dlq_topic
        self._timeout_s = timeout_s
        self._producer: Any | None = None

    def deliver(self, letters: Sequence[DeadLetter], ledger: DeadLetterLedger) -> int:
        """Send what the ledger has not seen; record each acknowledged one; return how many.

        Raises DeadLetterDeliveryError if any was not acknowledged within the timeout.
        """
        pending = [
            letter
            for letter in letters
            if not ledger.already_sent(
                TopicPartition(letter.topic, letter.partition), letter.offset
            )
        ]
        if not pending:
            return 0
        try:
            producer = self._producer_now()
            partitions = producer.partitions_for(self._topic)
            futures = [
                producer.send(
                    self._topic,
                    value=letter.value,
                    key=letter.key,
                    headers=dlq_headers(letter),
                    partition=dlq_partition(letter.partition, len(partitions)),
                )
                for letter in pending
            ]
            producer.flush(timeout=self._timeout_s)
        except KafkaError as exc:
            self.reset()
            raise DeadLetterDeliveryError(f"DLQ send failed: {exc!r}") from exc
        failed = 0
        for letter, future in zip(pending, futures, strict=True):
            if future.is_done and future.succeeded():
                ledger.record(TopicPartition(letter.topic, letter.partition), letter.offset)
            else:
                failed += 1
        if failed:
            self.reset()
            raise DeadLetterDeliveryError(
                f"{failed} of {len(pending)} dead letters not acknowledged"
            )
        return len(pending)

    def _producer_now(self) -> Any:
        if self._producer is None:
            self._producer = self._factory()
        return self._producer

    def reset(self) -> None:
        """Drop the producer; the next delivery creates a fresh one."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=1)
            except KafkaError as exc:
                log.warning("closing the DLQ producer failed: %r", exc)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=self._timeout_s)


def scan_already_dead_lettered(
    reader: Any,
    dlq_topic: str,
    source: TopicPartition,
    committed: int,
    *,
    chunk: int = 2_000,
    poll_timeout_ms: int = 300,
) -> set[int]:
    """Source offsets >= `committed` of `source` that a previous run already dead-lettered.

    `reader` is a group-less KafkaConsumer. Reads the DLQ partition of `source`
    backwards in chunks until a dead letter of `source` below `committed` shows
    up (everything older is older still) or the partition's beginning.
    """
    partitions = reader.partitions_for_topic(dlq_topic)
    if not partitions:
        return set()
    dtp = TopicPartition(dlq_topic, dlq_partition(source.partition, len(partitions)))
    reader.assign([dtp])
    begin = reader.beginning_offsets([dtp])[dtp]
    start = reader.end_offsets([dtp])[dtp]
    upper: int | None = None  # first chunk: read to the real end (tansu's end offset reads low)
    found: set[int] = set()
    while True:
        start = max(begin, start - chunk)
        reached_older = False
        for record in _read_range(reader, dtp, start, upper, poll_timeout_ms):
            origin = source_of(record.headers or [])
            if origin is None or origin[:2] != (source.topic, source.partition):
                continue
            if origin[2] >= committed:
                found.add(origin[2])
            else:
                reached_older = True
        if reached_older or start <= begin:
            return found
        upper = start


def _read_range(
    reader: Any, dtp: TopicPartition, start: int, upper: int | None, poll_timeout_ms: int
) -> list[Any]:
    """Records of one partition from `start` up to `upper` (exclusive; None: until idle)."""
    reader.seek(dtp, start)
    records: list[Any] = []
    while True:
        polled = reader.poll(timeout_ms=poll_timeout_ms).get(dtp, [])
        if not polled:
            return records
        records.extend(r for r in polled if upper is None or r.offset < upper)
        if upper is not None and polled[-1].offset >= upper - 1:
            return records
