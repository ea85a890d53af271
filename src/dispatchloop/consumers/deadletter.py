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

Within one process, every acknowledgement is written to the ledger as soon as it is
seen, even when a later send of the same batch fails, so a retry sends only what is
still missing; and a retry after a failure first re-reads the DLQ tail (the loop calls
`scan_already_dead_lettered` again), because a record whose acknowledgement was lost
may still have been written.

A dead letter that cannot be produced as it is (bigger than `max_record_bytes`, or
refused by the broker as too large) is sent as a bounded prefix of its bytes with the
headers `dlq.truncated=true`, `dlq.original.size` and `dlq.original.sha256`: the
partition behind it always moves on, and the original can still be identified.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)

HEADER_REASON = "dlq.reason"
HEADER_DETAIL = "dlq.detail"
HEADER_SOURCE_TOPIC = "dlq.source.topic"
HEADER_SOURCE_PARTITION = "dlq.source.partition"
HEADER_SOURCE_OFFSET = "dlq.source.offset"
HEADER_TRUNCATED = "dlq.truncated"
HEADER_ORIGINAL_SIZE = "dlq.original.size"
HEADER_ORIGINAL_SHA256 = "dlq.original.sha256"
MAX_DETAIL_CHARS = 1_000
MAX_TRUNCATED_KEY_BYTES = 1_024
# Kafka's per-record overhead (varints, timestamps, attributes) stays well below this.
RECORD_OVERHEAD_BYTES = 512


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
    """Some dead letters of a batch were not acknowledged by the DLQ topic.

    `acknowledged` holds those that were (already written to the ledger).
    """

    def __init__(self, message: str, acknowledged: Sequence[DeadLetter] = ()) -> None:
        super().__init__(message)
        self.acknowledged = list(acknowledged)


def dlq_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The DLQ record headers (DESIGN.md): reason, detail and source coordinates, as bytes."""
    return [
        (HEADER_REASON, letter.reason.encode()),
        (HEADER_DETAIL, letter.detail[:MAX_DETAIL_CHARS].encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, letter.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(letter.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(letter.offset).encode()),
    ]


class Outgoing(NamedTuple):
    """What is produced for one dead letter: the original, or its truncated form."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    truncated: bool


def outgoing(letter: DeadLetter, max_record_bytes: int, prefix_bytes: int, force: bool) -> Outgoing:
    """The record to produce: as it is when it fits, else a prefix with its size and sha256."""
    headers = dlq_headers(letter)
    size = (
        len(letter.value or b"")
        + len(letter.key or b"")
        + sum(len(name) + len(value) for name, value in headers)
        + RECORD_OVERHEAD_BYTES
    )
    if not force and size <= max_record_bytes:
        return Outgoing(letter.key, letter.value, headers, False)
    value = letter.value or b""
    headers += [
        (HEADER_TRUNCATED, b"true"),
        (HEADER_ORIGINAL_SIZE, str(len(value)).encode()),
        (HEADER_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    key = None if letter.key is None else letter.key[:MAX_TRUNCATED_KEY_BYTES]
    return Outgoing(key, value[:prefix_bytes], headers, True)


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

    def __init__(
        self,
        producer_factory: ProducerFactory,
        dlq_topic: str,
        timeout_s: float,
        max_record_bytes: int = 1_000_000,
        prefix_bytes: int = 65_536,
    ):
        self._factory = producer_factory
        self._topic = dlq_topic
        self._timeout_s = timeout_s
        self._max_record_bytes = max_record_bytes
        self._prefix_bytes = prefix_bytes
        self._producer: Any | None = None
        # Source coordinates the broker refused as too large: truncated from now on.
        self._too_large: set[tuple[str, int, int]] = set()
        self.truncated = 0

    def deliver(self, letters: Sequence[DeadLetter], ledger: DeadLetterLedger) -> list[DeadLetter]:
        """Send what the ledger has not seen; record each acknowledged one; return those.

        Raises DeadLetterDeliveryError if any was not acknowledged within the timeout;
        those acknowledged before the failure are in the ledger all the same.
        """
        pending = [letter for letter in letters if not _in_ledger(ledger, letter)]
        if not pending:
            return []
        sent: list[tuple[DeadLetter, Any]] = []
        try:
            producer = self._producer_now()
            partitions = producer.partitions_for(self._topic)
            for letter in pending:
                sent.append((letter, self._send(producer, letter, len(partitions))))
            producer.flush(timeout=self._timeout_s)
        except KafkaError as exc:
            self.reset()  # closing waits briefly: sends in flight complete or fail
            acknowledged = self._record_acknowledged(sent, ledger)
            raise DeadLetterDeliveryError(f"DLQ send failed: {exc!r}", acknowledged) from exc
        acknowledged = self._record_acknowledged(sent, ledger)
        if len(acknowledged) < len(pending):
            self.reset()
            acknowledged = self._record_acknowledged(sent, ledger)  # closing may finish some
            failed = len(pending) - len(acknowledged)
            raise DeadLetterDeliveryError(
                f"{failed} of {len(pending)} dead letters not acknowledged", acknowledged
            )
        return acknowledged

    def _send(self, producer: Any, letter: DeadLetter, n_partitions: int) -> Any:
        """One send; a record the client itself refuses as too large is sent truncated."""
        source = (letter.topic, letter.partition, letter.offset)
        partition = dlq_partition(letter.partition, n_partitions)
        for force in (source in self._too_large, True):
            record = outgoing(letter, self._max_record_bytes, self._prefix_bytes, force)
            try:
                future = producer.send(
                    self._topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=partition,
                )
            except MessageSizeTooLargeError:
                self._too_large.add(source)
                continue
            if record.truncated:
                self.truncated += 1
            return future
        raise MessageSizeTooLargeError(f"even the truncated dead letter of {source} is too large")

    def _record_acknowledged(
        self, sent: Sequence[tuple[DeadLetter, Any]], ledger: DeadLetterLedger
    ) -> list[DeadLetter]:
        """Write every acknowledged send to the ledger; note broker-side "too large"."""
        acknowledged = []
        for letter, future in sent:
            if future.is_done and future.succeeded():
                ledger.record(TopicPartition(letter.topic, letter.partition), letter.offset)
                acknowledged.append(letter)
            elif future.is_done and isinstance(future.exception, MessageSizeTooLargeError):
                self._too_large.add((letter.topic, letter.partition, letter.offset))
        return acknowledged

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


def _in_ledger(ledger: DeadLetterLedger, letter: DeadLetter) -> bool:
    return ledger.already_sent(TopicPartition(letter.topic, letter.partition), letter.offset)


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
