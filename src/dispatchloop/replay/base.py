"""The replay store contract. Every backend implements `ReplayStore`; one contract
test suite (tests/integration/test_replay_store_contract.py) runs against each.

Contract:
- `write_batch` is atomic and durable: when it returns, every event in the batch
  is on disk (committed), or, if it raises, none of the batch is. Only then may
  the caller commit Kafka offsets.
- Failures say whose fault they are: `StoreUnavailableError` (the store: retry later)
  or `StoreRejectedError` (the data: a value this backend cannot hold; the same rows
  fail the same way every time, so the caller isolates and dead-letters them).
- Writes are idempotent on `event_id`: an event whose id is already stored (or
  appears twice in the batch) is counted as a duplicate and not stored again;
  the first stored copy wins.
- The raw bytes of each event are kept unchanged (unknown fields included).
- Reads return validated `DispatchOutcomeEvent`s; windows are half-open
  [start, end) on `decided_at`, and both bounds are optional.
- Store order: every stored event has a `position`, increasing in the order rows
  were inserted (`tail_start`, `events_after`), for readers that follow what
  arrives (live shadow scoring, a canary's running totals; `position_before`
  finds where to start). With several writers on PostgreSQL a row may commit
  after a later-numbered one, so a follower can miss it: fine for a monitor,
  never used for anything that must see every event.
- Methods may be called from one thread at a time per instance.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from dispatchloop.events import DispatchOutcomeEvent, EventKeys


class IncomingEvent(NamedTuple):
    """A validated event's keys (or the whole event) with the exact bytes it arrived as."""

    event: EventKeys
    raw: bytes


class StoredEvent(NamedTuple):
    """An event with its position in store order."""

    position: int
    """Increasing in insertion order (gaps allowed)."""
    event: DispatchOutcomeEvent
    """The validated event."""


class WriteResult(NamedTuple):
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class TimeWindow:
    """Half-open [start, end) on decided_at; None means unbounded."""

    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class StoreStats:
    events: int
    episodes: int
    first_decided_at: datetime | None
    last_decided_at: datetime | None
    size_bytes: int | None


class StoreUnavailableError(Exception):
    """The store cannot be reached or written (network, disk, permissions)."""


class StoreRejectedError(Exception):
    """The store refused the batch's data itself; nothing of the batch was written."""


class ReplayStore(abc.ABC):
    """Durable, idempotent storage of dispatch outcome events."""

    @abc.abstractmethod
    def write_batch(self, batch: Sequence[IncomingEvent]) -> WriteResult:
        """Store the batch atomically and durably; duplicates by event_id are skipped."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """Counts and time range of everything stored."""

    @abc.abstractmethod
    def count_events(self, window: TimeWindow = TimeWindow()) -> int:
        """Number of events decided within the window."""

    @abc.abstractmethod
    def iter_events(
        self, window: TimeWindow = TimeWindow(), batch_size: int = 1_000
    ) -> Iterator[DispatchOutcomeEvent]:
        """Events within the window ordered by (decided_at, episode_id, step)."""

    @abc.abstractmethod
    def tail_start(self, last: int) -> int:
        """The position after which the `last` most recently stored events lie (0: all)."""

    @abc.abstractmethod
    def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events stored after `position`, in store order."""

    @abc.abstractmethod
    def iter_events_after(self, position: int, batch_size: int = 1_000) -> Iterator[StoredEvent]:
        """Every event stored after `position`, in store order, read `batch_size` (> 0,
        else ValueError) at a time.

        For readers that fold events into totals and drop them: a list of thousands of
        parsed events kept alive at once costs the garbage collector several times the
        parsing (benchmarks/canary_looks.py)."""

    @abc.abstractmethod
    def position_before(self, decided_since: datetime) -> int:
        """A position every stored event decided at or after `decided_since` lies after:
        one before the first stored of them, else the last position (0: empty store).
        `events_after` from it reads all of them and whatever comes later, and skips
        the older rows stored before them (a canary's outcomes since it started)."""

    @abc.abstractmethod
    def episode_ids(self, window: TimeWindow = TimeWindow()) -> list[str]:
        """Distinct episodes with at least one event in the window, oldest first."""

    @abc.abstractmethod
    def episode(self, episode_id: str) -> list[DispatchOutcomeEvent]:
        """All stored steps of one episode ordered by step."""

    @abc.abstractmethod
    def raw_event(self, event_id: str) -> bytes | None:
        """The exact bytes an event arrived as, or None if it is not stored."""

    @abc.abstractmethod
    def apply_retention(
        self, now: datetime, max_age: timedelta | None, max_events: int | None
    ) -> int:
        """Delete events older than max_age and the oldest beyond max_events; return count."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
