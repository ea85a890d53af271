"""Leader election with real processes on PostgreSQL (advisory lock) and SQLite (file lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.leader import LeaderElector, PgAdvisoryLock, lock_for
from dispatchloop.replay import open_store

pytestmark = pytest.mark.integration

CONTENDER = Path(__file__).with_name("leader_contender.py")
TAKEOVER_BOUND_S = 30.0


def _status(path: Path) -> tuple[str, int | None]:
    try:
        words = path.read_text().split()
    except FileNotFoundError:
        return ("none", None)
    if not words:
        return ("none", None)
    return (words[0], int(words[1]) if words[0] == "leader" else None)


def _wait(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture
def contenders(
    store_url: str, tmp_path: Path
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[Path]]]:
    open_store(store_url).close()  # migrate once, before the race
    procs, files = [], []
    try:
        for index in range(2):
            status = tmp_path / f"status{index}"
            files.append(status)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(CONTENDER), store_url, str(status), f"i{index}"],
                    stderr=(tmp_path / f"err{index}").open("wb"),
                )
            )
        yield procs, files
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


def test_exactly_one_leader_and_a_takeover_after_sigkill(store_url: str, contenders):
    procs, files = contenders
    _wait(lambda: all(_status(f)[0] != "none" for f in files), 60, "both contenders")
    time.sleep(2.0)  # several polls each: still exactly one leader
    roles = [_status(f)[0] for f in files]
    assert sorted(roles) == ["follower", "leader"], roles
    leader = roles.index("leader")
    first_epoch = _status(files[leader])[1]
    store = open_store(store_url)
    cycles = CycleStore(engine_of(store))
    orphan = cycles.start("interval", f"i{leader}", int(first_epoch or 0))
    os.kill(procs[leader].pid, signal.SIGKILL)
    procs[leader].wait(timeout=10)
    other = files[1 - leader]
    took = _wait(lambda: _status(other)[0] == "leader", TAKEOVER_BOUND_S, "the takeover")
    assert took < TAKEOVER_BOUND_S
    new_epoch = _status(other)[1]
    assert new_epoch is not None and first_epoch is not None and new_epoch > first_epoch
    aborted = cycles.get(orphan)
    store.close()
    assert aborted is not None and aborted.outcome == "aborted"


def test_a_leader_whose_connection_is_cut_loses_leadership(pg_url: str):
    store = open_store(pg_url)
    cycles = CycleStore(engine_of(store))
    lock_a = lock_for(pg_url)
    assert isinstance(lock_a, PgAdvisoryLock)
    a = LeaderElector(lock_a, cycles, "a")
    b = LeaderElector(lock_for(pg_url), cycles, "b")
    try:
        assert a.poll().leader and not b.poll().leader
        epoch = a.status.epoch
        assert epoch is not None and a.still_leading(epoch)
        pid = lock_a.backend_pid()
        admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
        assert not a.still_leading(epoch)
        assert not a.poll().leader
        assert b.poll().leader
        assert not a.poll().leader, "the lock is b's now"
    finally:
        a.resign()
        b.resign()
        store.close()
