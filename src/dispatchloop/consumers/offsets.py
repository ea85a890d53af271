"""Which offsets to commit or rewind to after a poll: pure functions over a poll's records.

Kafka's committed offset is the *next* record to read, so a durable batch commits
`last processed offset + 1` per partition; a failed batch rewinds each partition
to its first record so the whole poll is processed again (store writes are
idempotent, dead letters already delivered are skipped by the ledger).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from kafka.structs import OffsetAndMetadata, TopicPartition


class HasOffset(Protocol):
    @property
    def offset(self) -> int: ...


def commit_offsets(
    batch: Mapping[TopicPartition, Sequence[HasOffset]],
    assigned: Collection[TopicPartition],
) -> dict[TopicPartition, OffsetAndMetadata]:
    """`last offset + 1` for every partition of the batch that is still assigned to us.

    Partitions revoked while the batch was processed are left out: committing them
    would overwrite the new owner's progress (their records are re-delivered there
    and deduplicated by the store).
    """
    return {
        tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)
        for tp, records in batch.items()
        if records and tp in assigned
    }


def rewind_positions(
    batch: Mapping[TopicPartition, Sequence[HasOffset]],
) -> dict[TopicPartition, int]:
    """The first offset of each partition in the batch: where to seek to process it again."""
    return {tp: records[0].offset for tp, records in batch.items() if records}


def lag(
    end_offsets: Mapping[TopicPartition, int], positions: Mapping[TopicPartition, int]
) -> dict[int, int]:
    """Records behind the end of each partition (never negative; tansu's end offsets read low)."""
    return {
        tp.partition: max(0, end - positions[tp])
        for tp, end in end_offsets.items()
        if tp in positions
    }
