"""The replay store's one table, as SQLAlchemy Core metadata for queries.

Layout (why): `id` is an integer primary key (SQLite's rowid), so rows are
appended in arrival order and the big raw payloads never move. Deduplication
rides on a unique index over `event_id` stored compactly — a native `uuid` on
PostgreSQL and a 16-byte BLOB on SQLite (a TEXT UUID is 36 bytes plus overhead,
which makes the random-key index, the write path's main cost, ~35 % slower).
`decided_at_us` is an integer epoch in microseconds so that windows are plain
integer range scans on an index, identical on both backends. The DDL itself lives
in the Alembic migrations (replay/migrations/versions); keep the two in step.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

TABLE_NAME = "replay_events"
VERSION_TABLE = "replay_alembic_version"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class EventId(sa.types.TypeDecorator[uuid.UUID]):
    """A UUID: native `uuid` on PostgreSQL, 16 raw bytes on SQLite."""

    impl = sa.LargeBinary(16)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.UUID(as_uuid=True))
        return dialect.type_descriptor(sa.LargeBinary(16))

    def process_bind_param(self, value: uuid.UUID | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return value.bytes

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(bytes=bytes(value))


metadata = sa.MetaData()

events = sa.Table(
    TABLE_NAME,
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("event_id", EventId(), nullable=False),
    sa.Column("episode_id", sa.Text(), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("decided_at_us", sa.BigInteger(), nullable=False),
    sa.Column("raw", sa.LargeBinary(), nullable=False),
    sa.Index("uq_replay_events_event_id", "event_id", unique=True),
    sa.Index("ix_replay_events_episode_step", "episode_id", "step"),
    sa.Index("ix_replay_events_decided_at", "decided_at_us"),
)


def to_epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact, no float)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_epoch_us(micros: int) -> datetime:
    """The aware UTC datetime of an epoch in microseconds."""
    return _EPOCH + timedelta(microseconds=micros)
