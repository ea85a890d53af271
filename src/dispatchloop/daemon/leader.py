"""Exactly one leader among the `run` instances sharing a store.

PostgreSQL: a session advisory lock held on a dedicated connection. The lock
lives exactly as long as that session: a leader that dies (SIGKILL, crash,
host gone) loses it when PostgreSQL closes the session — at once when the
process dies, within the server-side TCP keepalive bound (set on the session
to ~11 s) when the host or the network does. The holder checks its connection
every period: a lost connection is lost leadership, even before anyone else
takes over. SQLite: an `fcntl` lock on a file next to the database (one host
by construction; the kernel drops it when the process dies).

Leadership terms are numbered (loop_leadership): each acquisition opens a new
epoch, larger than every earlier one, which the cycles carry. A stale leader
— one that has not noticed yet that it lost the lock — is fenced twice: the
runner re-checks the lock and the epoch before every registry write, and the
registry's compare-and-swap refuses an alias move from a stale expectation.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dispatchloop.daemon.cycles import CycleStore
from dispatchloop.errors import TransientError
from dispatchloop.replay.sql_store import first_line

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x64_6C_6C_65_61_64_65_72  # "dlleader": distinct from the migration lock
PG_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
PG_CHECK_TIMEOUT_MS = 5_000


class LeaderLock(Protocol):
    """A lock at most one process holds; `check` says whether this one still does."""

    def try_acquire(self) -> bool:
        """Take the lock if free; True if this process holds it now. Never blocks long."""
        ...

    def check(self) -> bool:
        """True while the lock is provably held (the connection answers)."""
        ...

    def release(self) -> None:
        """Give the lock up (on stop); safe to call when not held."""
        ...


class PgAdvisoryLock:
    """`pg_try_advisory_lock` on a dedicated autocommit connection."""

    def __init__(self, url: str, key: int = LEADER_LOCK_KEY) -> None:
        self._engine = sa.create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": 5, **PG_KEEPALIVE},
        )
        self._key = key
        self._conn: sa.Connection | None = None
        self._held = False

    def try_acquire(self) -> bool:
        if self._held:
            return self.check()
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
                # Server side: notice a dead leader's host within ~11 s, not hours.
                for name, value in (("idle", 5), ("interval", 2), ("count", 3)):
                    self._conn.exec_driver_sql(f"SET tcp_keepalives_{name} = {value}")
                self._conn.exec_driver_sql(f"SET statement_timeout = {PG_CHECK_TIMEOUT_MS}")
            got = self._conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
            ).scalar()
        except sa.exc.DBAPIError as exc:
            log.warning("leader lock: cannot reach PostgreSQL: %s", first_line(exc))
            self._drop()
            return False
        self._held = bool(got)
        return self._held

    def check(self) -> bool:
        if not self._held or self._conn is None:
            return False
        try:
            self._conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as exc:
            log.error("leader lock: lost the lock's connection: %s", first_line(exc))
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None and self._held:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
            except sa.exc.DBAPIError as exc:
                log.warning("leader lock: unlock failed (the session ends anyway): %s", exc)
        self._drop()
        self._engine.dispose()

    def backend_pid(self) -> int | None:
        """The server process of the lock's session (tests terminate it to cut the connection)."""
        if self._conn is None:
            return None
        return int(self._conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() or 0)

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except sa.exc.DBAPIError:
                log.debug("leader lock: closing a broken connection failed", exc_info=True)
            self._conn = None


class FileLock:
    """An exclusive non-blocking `flock` on one file: the SQLite store's leader lock."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._handle: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._handle is not None:
            return True
        handle = self._path.open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle = handle
        return True

    def check(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def lock_for(store_url: str) -> LeaderLock:
    """The leader lock that fits the store: advisory lock (PostgreSQL) or file lock (SQLite)."""
    url = make_url(store_url)
    if url.get_backend_name() == "postgresql":
        return PgAdvisoryLock(store_url)
    database = url.database or ""
    if database in ("", ":memory:"):
        raise TransientError("an in-memory SQLite store cannot be shared: no leader lock needed")
    return FileLock(Path(f"{database}.leader.lock"))


@dataclass(frozen=True)
class LeaderStatus:
    """What /readyz and the metrics say about leadership."""

    instance_id: str
    """This instance (host:pid unless configured)."""
    leader: bool
    """Whether this instance leads now."""
    epoch: int | None
    """The term this instance leads in, None when following."""


class LeaderElector:
    """Tries to lead, keeps checking, and starts each term with a new epoch.

    `poll()` is called from the scheduler's loop every period; it never blocks
    longer than a database round trip. On acquiring: a new epoch, and every
    running cycle of earlier epochs is marked aborted (its leader is gone).
    """

    def __init__(self, lock: LeaderLock, cycles: CycleStore, instance_id: str) -> None:
        self._lock = lock
        self._cycles = cycles
        self._instance_id = instance_id
        self._epoch: int | None = None
        self._guard = threading.Lock()

    @property
    def status(self) -> LeaderStatus:
        with self._guard:
            epoch = self._epoch
        return LeaderStatus(self._instance_id, epoch is not None, epoch)

    def poll(self) -> LeaderStatus:
        """Check or try to take the lock; returns the status after."""
        if self._epoch is not None:
            if not self._lock.check():
                log.error("lost leadership (epoch %d)", self._epoch)
                self._set(None)
            return self.status
        if not self._lock.try_acquire():
            return self.status
        try:
            epoch = self._cycles.new_epoch(self._instance_id)
            aborted = self._cycles.abort_orphans(epoch)
        except TransientError as exc:
            log.warning("took the lock but cannot open a term (%s); releasing it", exc)
            self._lock.release()
            return self.status
        if aborted:
            log.warning("marked cycles %s of the previous leader aborted", aborted)
        log.info("leading as %s (epoch %d)", self._instance_id, epoch)
        self._set(epoch)
        return self.status

    def still_leading(self, epoch: int) -> bool:
        """Fencing before a registry write: the lock answers and no newer term exists."""
        if self._epoch != epoch or not self._lock.check():
            return False
        try:
            return self._cycles.current_epoch() == epoch
        except TransientError:
            return False

    def resign(self) -> None:
        """Release the lock (on stop), so another instance takes over at once."""
        self._lock.release()
        self._set(None)

    def _set(self, epoch: int | None) -> None:
        with self._guard:
            self._epoch = epoch
