"""`open_store`: turn a store URL into a ready, migrated `ReplayStore`.

SQLite connections are tuned for the ingest hot path and for durability:
WAL (readers never block the writer), synchronous=FULL (a committed batch
survives power loss, which the Kafka offset commit relies on), 16 KiB pages
(fewer WAL frames per batch of ~1.9 KB events), a 64 MiB page cache (the
random-key dedup index stays in memory instead of being re-read on every
batch) and a busy timeout so a retention pass or a second process waits
instead of failing. PostgreSQL gets a connect timeout and pre-ping, so a daemon
outlives a database restart. Every way of not reaching the database becomes
`StoreUnavailableError` with one sentence, which the CLI turns into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

from dispatchloop.replay.base import ReplayStore, StoreUnavailableError
from dispatchloop.replay.migrate import current_revision, upgrade_to_head
from dispatchloop.replay.pg_copy import create_staging
from dispatchloop.replay.sql_store import SqlReplayStore, first_line

SQLITE_CACHE_KIB = 65_536
# 16 KiB pages: a batch of 2,000 ~1.9 KB events writes a third of the WAL frames
# it does with 4 KiB pages; write_batch 1.35x faster at 200k events (BENCHMARKS.md,
# store run 3; 32 and 64 KiB were slower in a scratch sweep). Applies when the
# database file is created; existing files keep their page size.
SQLITE_PAGE_SIZE = 16_384
SQLITE_WAL_AUTOCHECKPOINT = 1_000  # pages; SQLite's default, no measured gain above it
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
_SUPPORTED = {("sqlite", "pysqlite"), ("postgresql", "psycopg")}


class StoreMissingError(StoreUnavailableError):
    """`open_store(create=False)` found no store at the URL (reachable, but never created)."""


def open_store(url: str, *, create: bool = True) -> ReplayStore:
    """Open (and with `create`, create) the store at `url` and migrate it to head.

    `create=False` is for read-only tools (`store stats`): a missing SQLite file or
    an empty PostgreSQL database is reported instead of silently created.
    """
    engine, description = open_engine(url, create=create)
    return SqlReplayStore(engine, description)


def open_engine(url: str, *, create: bool = True) -> tuple[sa.Engine, str]:
    """A tuned, migrated engine on the store database and its password-free description.

    The model registry keeps its tables in the same database (same migrations), so it
    opens its engine here rather than repeating the tuning and error mapping."""
    parsed = _parse_url(url)
    description = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, create, description)
    else:
        engine = _postgresql_engine(parsed)
    try:
        if not create:
            _require_existing(engine, description)
        upgrade_to_head(engine)
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise StoreUnavailableError(
            f"Cannot open the replay store at {description}: {first_line(exc)}."
        ) from exc
    except StoreUnavailableError:
        engine.dispose()
        raise
    except CommandError as exc:  # e.g. a revision this version does not know
        engine.dispose()
        raise StoreUnavailableError(
            f"Cannot migrate the replay store at {description} (written by a newer "
            f"dispatchloop?): {exc}."
        ) from exc
    return engine, description


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:  # the URL is not echoed: it may hold a password
        raise StoreUnavailableError("The store URL is not a valid database URL.") from exc
    if parsed.drivername == "postgresql":  # psycopg (3) is the driver we ship, not psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if (parsed.get_backend_name(), parsed.get_driver_name()) not in _SUPPORTED:
        raise StoreUnavailableError(
            f"The store URL must start with sqlite:// or postgresql+psycopg://, "
            f"not {parsed.drivername}://."
        )
    return parsed


def _require_existing(engine: sa.Engine, description: str) -> None:
    with engine.connect() as conn:
        if current_revision(conn) is None:
            raise StoreMissingError(
                f"There is no replay store at {description} yet (nothing ingested, "
                "or a wrong store URL)."
            )


def _sqlite_engine(url: URL, create: bool, description: str) -> sa.Engine:
    database = url.database or ":memory:"
    kwargs: dict[str, Any] = {}
    if database == ":memory:":
        # One shared connection, else every pooled connection sees its own empty database.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        _prepare_sqlite_path(Path(database), create, description)
    engine = sa.create_engine(url, **kwargs)
    sa.event.listen(engine, "connect", _tune_sqlite)
    return engine


def _prepare_sqlite_path(path: Path, create: bool, description: str) -> None:
    if not create:
        if not path.is_file():
            raise StoreMissingError(
                f"There is no replay store at {description} yet (nothing ingested, "
                "or a wrong store URL)."
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(
            f"Cannot create the directory {str(path.parent)!r} for the replay store: "
            f"{exc.strerror}."
        ) from exc


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")  # new databases only
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT}")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cursor.execute("PRAGMA temp_store = MEMORY")
    finally:
        cursor.close()


def _postgresql_engine(url: URL) -> sa.Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    sa.event.listen(engine, "connect", create_staging)
    return engine
