"""`ReplayStore` on SQLAlchemy Core: SQLite (embedded default) and PostgreSQL.

One class serves both backends; they differ only in how a connection is tuned
(`engine.py`) and in how the event id is bound (uuid vs 16 bytes, see schema.py).

Write path (the Kafka ingest hot path, once per poll): duplicates inside the
batch are dropped in Python first (the first copy wins), then multi-row
`INSERT ... VALUES (...), (...) ON CONFLICT (event_id) DO NOTHING` statements of
`ROWS_PER_INSERT` rows run in one transaction
(PostgreSQL: COPY into a staging table + one INSERT ... SELECT, see pg_copy.py). The
driver's rowcount of those statements is exactly the number of new rows, so
`duplicates = len(batch) - inserted` counts in-batch and already-stored copies
alike. `ON CONFLICT (event_id)` rather than SQLite's `INSERT OR IGNORE`: OR
IGNORE would also silently skip a row that breaks NOT NULL, losing an event.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

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
from dispatchloop.replay.pg_copy import copy_insert
from dispatchloop.replay.schema import TABLE_NAME, events, from_epoch_us, to_epoch_us

# Rows deleted per retention transaction: short enough that the ingest writer
# never waits long for the lock, large enough that the loop is not all overhead.
RETENTION_CHUNK = 5_000

ALL_TIME = TimeWindow()  # frozen, so safe as a default argument
# Rows per INSERT statement. The ingest loop writes from a thread while its main thread
# parses the next poll: `executemany` re-takes the GIL for every row and so waits up to a
# switch interval (5 ms) per row behind the parser; one multi-row statement binds its
# parameters in one C call and inserts every row in one step with the GIL released.
# 199 rows x 5 columns stays under SQLite's oldest limit of 999 bound parameters.
ROWS_PER_INSERT = 199
_INSERT_COLUMNS = "event_id, episode_id, step, decided_at_us, raw"
Row = tuple[Any, str, int, int, bytes]


def window_clause(window: TimeWindow) -> sa.ColumnElement[bool]:
    """The half-open [start, end) condition on decided_at (true when unbounded)."""
    conditions: list[sa.ColumnElement[bool]] = []
    if window.start is not None:
        conditions.append(events.c.decided_at_us >= to_epoch_us(window.start))
    if window.end is not None:
        conditions.append(events.c.decided_at_us < to_epoch_us(window.end))
    return sa.and_(sa.true(), *conditions)


def _parse(raw: bytes) -> DispatchOutcomeEvent:
    return DispatchOutcomeEvent.model_validate_json(raw)


class SqlReplayStore(ReplayStore):
    """The replay store on one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine, description: str, *, pg_copy: bool = True) -> None:
        """`pg_copy=False` writes with multi-row INSERTs on PostgreSQL too (a benchmark peer)."""
        self._engine = engine
        self._description = description
        self._native_uuid = engine.dialect.name == "postgresql"
        self._pg_copy = pg_copy and self._native_uuid
        self._insert_sql: dict[int, str] = {}

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    def _placeholder(self) -> str:
        return "%s" if self._engine.dialect.paramstyle in ("format", "pyformat") else "?"

    # --- writes -------------------------------------------------------------------------

    def write_batch(self, batch: Sequence[IncomingEvent]) -> WriteResult:
        rows = self._unique_rows(batch)
        if not rows:
            return WriteResult(0, len(batch))
        try:
            with self._engine.begin() as conn:
                inserted = copy_insert(conn, rows) if self._pg_copy else self._insert(conn, rows)
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
            raise StoreRejectedError(f"{type(exc.orig).__name__}: {first_line(exc)}") from exc
        except sa.exc.DBAPIError as exc:
            # Operational, interface, programming, internal: the store's state, not the rows'.
            raise self._unavailable("write a batch to", exc) from exc
        except (ValueError, TypeError, OverflowError) as exc:
            # Raised while binding a row's values (e.g. a string UTF-8 cannot encode).
            raise StoreRejectedError(f"{type(exc).__name__}: {exc}") from exc
        return WriteResult(inserted, len(batch) - inserted)

    def _insert(self, conn: sa.Connection, rows: list[Row]) -> int:
        inserted = 0
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start : start + ROWS_PER_INSERT]
            parameters = tuple(value for row in chunk for value in row)
            inserted += conn.exec_driver_sql(
                self._insert_statement(len(chunk)), parameters
            ).rowcount
        return inserted

    def _insert_statement(self, n_rows: int) -> str:
        """The SQL for n rows; cached, so the driver's statement cache recognises it."""
        statement = self._insert_sql.get(n_rows)
        if statement is None:
            row = "(" + ", ".join([self._placeholder()] * 5) + ")"
            statement = (
                f"INSERT INTO {TABLE_NAME} ({_INSERT_COLUMNS}) VALUES {', '.join([row] * n_rows)} "
                "ON CONFLICT (event_id) DO NOTHING"
            )
            self._insert_sql[n_rows] = statement
        return statement

    def _unique_rows(self, batch: Sequence[IncomingEvent]) -> list[Row]:
        """One row per distinct event_id, first copy first; no per-row SQL work."""
        seen: set[uuid.UUID] = set()
        rows: list[Row] = []
        native = self._native_uuid
        for event, raw in batch:
            event_id = event.event_id
            if event_id in seen:
                continue
            seen.add(event_id)
            key: Any = event_id if native else event_id.bytes
            rows.append((key, event.episode_id, event.step, to_epoch_us(event.decided_at), raw))
        return rows

    def apply_retention(
        self, now: datetime, max_age: timedelta | None, max_events: int | None
    ) -> int:
        deleted = 0
        if max_age is not None:
            cutoff = to_epoch_us(now - max_age)
            deleted += self._delete_oldest(events.c.decided_at_us < cutoff, limit=None)
        if max_events is not None:
            excess = self.count_events() - max_events
            if excess > 0:
                deleted += self._delete_oldest(sa.true(), limit=excess)
        return deleted

    def _delete_oldest(self, condition: sa.ColumnElement[bool], limit: int | None) -> int:
        """Delete oldest-first in short transactions; stop at `limit` rows or when none match."""
        deleted = 0
        while limit is None or deleted < limit:
            chunk = RETENTION_CHUNK if limit is None else min(RETENTION_CHUNK, limit - deleted)
            oldest = (
                sa.select(events.c.id)
                .where(condition)
                .order_by(events.c.decided_at_us, events.c.id)
                .limit(chunk)
            )
            statement = sa.delete(events).where(events.c.id.in_(oldest.scalar_subquery()))
            try:
                with self._engine.begin() as conn:
                    count = conn.execute(statement).rowcount
            except sa.exc.OperationalError as exc:
                raise self._unavailable("apply retention to", exc) from exc
            deleted += count
            if count < chunk:
                break
        return deleted

    # --- reads --------------------------------------------------------------------------

    def _read(self, statement: sa.Executable) -> list[sa.Row[Any]]:
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(statement))
        except sa.exc.OperationalError as exc:
            raise self._unavailable("read from", exc) from exc

    def stats(self) -> StoreStats:
        statement = sa.select(
            sa.func.count(),
            sa.func.count(sa.distinct(events.c.episode_id)),
            sa.func.min(events.c.decided_at_us),
            sa.func.max(events.c.decided_at_us),
        )
        count, episodes, first, last = tuple(self._read(statement)[0])
        return StoreStats(
            events=int(count),
            episodes=int(episodes),
            first_decided_at=None if first is None else from_epoch_us(int(first)),
            last_decided_at=None if last is None else from_epoch_us(int(last)),
            size_bytes=self.size_bytes(),
        )

    def size_bytes(self) -> int | None:
        """Bytes on disk: SQLite pages plus WAL; PostgreSQL table, indexes and TOAST."""
        if self._engine.dialect.name == "postgresql":
            statement: sa.Executable = sa.text(f"SELECT pg_total_relation_size('{TABLE_NAME}')")
            return int(self._read(statement)[0][0])
        pages = self._read(sa.text("PRAGMA page_count"))[0][0]
        page_size = self._read(sa.text("PRAGMA page_size"))[0][0]
        return int(pages) * int(page_size) + _wal_bytes(self._engine)

    def count_events(self, window: TimeWindow = ALL_TIME) -> int:
        statement = sa.select(sa.func.count()).select_from(events).where(window_clause(window))
        return int(self._read(statement)[0][0])

    def iter_events(
        self, window: TimeWindow = ALL_TIME, batch_size: int = 1_000
    ) -> Iterator[DispatchOutcomeEvent]:
        """Keyset pages: each page is one short query, so no snapshot is held between pages."""
        order = (events.c.decided_at_us, events.c.episode_id, events.c.step, events.c.id)
        base = sa.select(*order, events.c.raw).where(window_clause(window)).order_by(*order)
        after: tuple[Any, ...] | None = None
        while True:
            page = base.limit(batch_size)
            if after is not None:
                page = page.where(
                    events.c.decided_at_us >= after[0], sa.tuple_(*order) > sa.tuple_(*after)
                )
            rows = self._read(page)
            for row in rows:
                yield _parse(row.raw)
            if len(rows) < batch_size:
                return
            after = tuple(rows[-1])[:4]

    def tail_start(self, last: int) -> int:
        """Walks the primary key backwards: `last` index entries, no payload read."""
        statement = sa.select(events.c.id).order_by(events.c.id.desc()).offset(last).limit(1)
        rows = self._read(statement)
        return int(rows[0][0]) if rows else 0

    def events_after(self, position: int, limit: int) -> list[StoredEvent]:
        """One query: the first page of `iter_events_after`."""
        if limit <= 0:
            return []
        return list(itertools.islice(self.iter_events_after(position, limit), limit))

    def iter_events_after(self, position: int, batch_size: int = 1_000) -> Iterator[StoredEvent]:
        """Keyset pages on the primary key: one short query per page, no snapshot held."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        while True:
            statement = (
                sa.select(events.c.id, events.c.raw)
                .where(events.c.id > position)
                .order_by(events.c.id)
                .limit(batch_size)
            )
            rows = self._read(statement)
            for row in rows:
                yield StoredEvent(int(row.id), _parse(row.raw))
            if len(rows) < batch_size:
                return
            position = int(rows[-1].id)

    def position_before(self, decided_since: datetime) -> int:
        """One statement, so one snapshot: an event stored between a `min` and a `max`
        read could otherwise fall before the answer. The `min` walks the decided_at
        index from `decided_since` (the events decided since, read once per canary)."""
        since = events.c.decided_at_us >= to_epoch_us(decided_since)
        first = sa.select(sa.func.min(events.c.id)).where(since).scalar_subquery()
        last = sa.select(sa.func.max(events.c.id)).scalar_subquery()
        first_id, last_id = tuple(self._read(sa.select(first, last))[0])
        if first_id is not None:
            return int(first_id) - 1
        return int(last_id) if last_id is not None else 0

    def episode_ids(self, window: TimeWindow = ALL_TIME) -> list[str]:
        first_seen = sa.func.min(events.c.decided_at_us)
        statement = (
            sa.select(events.c.episode_id)
            .where(window_clause(window))
            .group_by(events.c.episode_id)
            .order_by(first_seen, events.c.episode_id)
        )
        return [str(row[0]) for row in self._read(statement)]

    def episode(self, episode_id: str) -> list[DispatchOutcomeEvent]:
        statement = (
            sa.select(events.c.raw)
            .where(events.c.episode_id == episode_id)
            .order_by(events.c.step, events.c.id)
        )
        return [_parse(row.raw) for row in self._read(statement)]

    def raw_event(self, event_id: str) -> bytes | None:
        try:
            key = uuid.UUID(event_id)
        except ValueError:
            return None
        rows = self._read(sa.select(events.c.raw).where(events.c.event_id == key))
        return bytes(rows[0].raw) if rows else None

    def close(self) -> None:
        self._engine.dispose()

    def _unavailable(self, action: str, exc: sa.exc.DBAPIError) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Cannot {action} the replay store at {self._description}: {first_line(exc)}."
        )


def first_line(exc: sa.exc.DBAPIError) -> str:
    """The driver's own message, first line only, without a trailing period."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return (text.strip().splitlines() or ["unknown error"])[0].strip().rstrip(".")


def _wal_bytes(engine: sa.Engine) -> int:
    database = engine.url.database
    if not database or database == ":memory:":
        return 0
    try:
        return Path(f"{database}-wal").stat().st_size
    except FileNotFoundError:
        return 0
