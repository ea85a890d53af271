"""The replay-store contract (replay/base.py), one suite run on SQLite and PostgreSQL.

Every test takes `store_url` (tests/conftest.py), which is parametrised over both
backends with a fresh database per test, as Optuna's pytest_storages does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.replay import (
    IncomingEvent,
    ReplayStore,
    StoreMissingError,
    StoreRejectedError,
    StoreUnavailableError,
    TimeWindow,
    open_store,
    sql_store,
)
from dispatchloop.replay.migrate import current_revision, head_revision
from dispatchloop.replay.retention import apply_configured_retention
from dispatchloop.replay.sql_store import ROWS_PER_INSERT, SqlReplayStore
from dispatchloop.replay.transitions import TransitionCounts, iter_transitions
from dispatchloop.screening import ScreenedEvent, screen_outcome
from dispatchloop.settings import RetentionSettings
from dispatchloop.testing.events import encode, event_stream

pytestmark = pytest.mark.integration


def incoming(raw: bytes) -> IncomingEvent:
    event = parse_outcome(raw, max_bytes=65_536)
    assert isinstance(event, DispatchOutcomeEvent), event
    return IncomingEvent(event, raw)


def make_batch(seed: int, n: int, **kwargs: Any) -> list[IncomingEvent]:
    return [incoming(encode(event)) for event in event_stream(seed, n, **kwargs)]


@pytest.fixture
def store(store_url: str) -> Iterator[ReplayStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def test_write_batch_counts_new_events(store: ReplayStore) -> None:
    batch = make_batch(1, 50)
    result = store.write_batch(batch)
    assert (result.inserted, result.duplicates) == (50, 0)
    assert store.count_events() == 50


def test_rewriting_a_batch_stores_nothing_twice(store: ReplayStore) -> None:
    batch = make_batch(2, 40)
    store.write_batch(batch)
    result = store.write_batch(batch)
    assert (result.inserted, result.duplicates) == (0, 40)
    assert store.count_events() == 40


def test_duplicates_within_one_batch_count_as_duplicates(store: ReplayStore) -> None:
    batch = make_batch(3, 30)
    doubled = batch[:10] + batch[:10] + batch[10:] + batch[5:8]
    result = store.write_batch(doubled)
    assert (result.inserted, result.duplicates) == (30, 13)
    assert store.count_events() == 30


def test_overlapping_batch_counts_old_and_new(store: ReplayStore) -> None:
    batch = make_batch(4, 60)
    store.write_batch(batch[:40])
    result = store.write_batch(batch[20:])
    assert (result.inserted, result.duplicates) == (20, 20)


def test_a_batch_of_several_statements_counts_exactly(store: ReplayStore) -> None:
    """Batches span several multi-row INSERTs; old rows fall on both sides of a boundary."""
    batch = make_batch(14, 2 * ROWS_PER_INSERT + 7)
    already = batch[ROWS_PER_INSERT - 3 : ROWS_PER_INSERT + 3] + batch[-2:]
    store.write_batch(already)
    result = store.write_batch(batch)
    assert (result.inserted, result.duplicates) == (len(batch) - 8, 8)
    assert store.count_events() == len(batch)


def test_screened_keys_are_stored_like_parsed_events(store: ReplayStore) -> None:
    """The ingest loop hands the store screening's keys, not models: same rows, same reads."""
    raws = [encode(event) for event in event_stream(15, 30)]
    screened = [screen_outcome(raw, 65_536) for raw in raws]
    keys = [each for each in screened if isinstance(each, ScreenedEvent)]
    assert len(keys) == len(raws)
    store.write_batch([IncomingEvent(each, raw) for each, raw in zip(keys, raws, strict=True)])
    assert store.write_batch([incoming(raw) for raw in raws]).duplicates == 30
    stored = store.episode(str(json.loads(raws[0])["episode_id"]))
    assert [event.step for event in stored] == list(range(19))
    assert store.stats().first_decided_at == next(iter(stored)).decided_at


def test_first_stored_copy_wins(store: ReplayStore) -> None:
    original = next(event_stream(5, 1))
    changed = json.loads(json.dumps(original))
    changed["outcome"]["empty_km"] = 99.0
    store.write_batch([incoming(encode(original))])
    result = store.write_batch([incoming(encode(changed))])
    assert result.duplicates == 1
    assert store.raw_event(original["event_id"]) == encode(original)


def test_empty_batch_is_a_no_op(store: ReplayStore) -> None:
    assert tuple(store.write_batch([])) == (0, 0)
    assert store.count_events() == 0


# --- raw bytes ----------------------------------------------------------------------------


def test_raw_bytes_are_kept_exactly_with_unknown_fields(store: ReplayStore) -> None:
    event = next(event_stream(6, 1))
    event["x_vendor"] = {"note": "Genève ✓", "nested": [1, 2.50, None]}
    raw = json.dumps(event, indent=3, ensure_ascii=False).encode()  # not compact, not ASCII
    store.write_batch([incoming(raw)])
    assert store.raw_event(event["event_id"]) == raw
    assert store.raw_event("0b6f1c2e-6d0a-4a53-9d84-2f0f6c3f5a10") is None
    assert store.raw_event("not-a-uuid") is None


# --- stats, counts, windows --------------------------------------------------------------

START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


def test_stats_of_empty_and_filled_store(store: ReplayStore) -> None:
    empty = store.stats()
    assert (empty.events, empty.episodes, empty.first_decided_at) == (0, 0, None)
    store.write_batch(make_batch(7, 45, steps_per_episode=10))
    stats = store.stats()
    assert (stats.events, stats.episodes) == (45, 5)
    assert stats.first_decided_at == START
    assert stats.last_decided_at == START + timedelta(minutes=3 * 44)
    assert stats.first_decided_at is not None and stats.first_decided_at.utcoffset() == timedelta(0)
    assert stats.size_bytes is not None and stats.size_bytes > 45 * 1_000


def test_windows_are_half_open(store: ReplayStore) -> None:
    store.write_batch(make_batch(8, 20))  # decided 3 minutes apart from START
    at = [START + timedelta(minutes=3 * i) for i in range(20)]
    assert store.count_events(TimeWindow(at[5], at[10])) == 5
    assert store.count_events(TimeWindow(start=at[5])) == 15
    assert store.count_events(TimeWindow(end=at[5])) == 5
    assert store.count_events(TimeWindow(at[5], at[5])) == 0
    assert store.count_events(TimeWindow(at[5], at[5] + timedelta(microseconds=1))) == 1


def test_offset_timestamps_are_stored_as_the_same_instant(store: ReplayStore) -> None:
    event = next(event_stream(9, 1))
    event["decided_at"] = "2026-11-23T08:00:00.000250+02:00"  # 06:00:00.000250Z
    store.write_batch([incoming(encode(event))])
    instant = datetime(2026, 11, 23, 6, 0, 0, 250, tzinfo=UTC)
    assert store.count_events(TimeWindow(instant, instant + timedelta(microseconds=1))) == 1
    assert store.stats().first_decided_at == instant


def test_iter_events_orders_by_decided_at_episode_step(store: ReplayStore) -> None:
    # Two streams decided at the same instants: ties broken by episode_id, then step.
    batch = make_batch(11, 25, steps_per_episode=4) + make_batch(10, 25, steps_per_episode=4)
    store.write_batch(batch)
    got = [(e.decided_at, e.episode_id, e.step) for e in store.iter_events(batch_size=7)]
    assert got == sorted((i.event.decided_at, i.event.episode_id, i.event.step) for i in batch)
    window = TimeWindow(START + timedelta(minutes=30), START + timedelta(minutes=60))
    in_window = list(store.iter_events(window, batch_size=3))
    assert len(in_window) == 20
    assert all(window.start <= e.decided_at < window.end for e in in_window)  # type: ignore[operator]


def test_episode_returns_steps_in_order(store: ReplayStore) -> None:
    batch = make_batch(12, 12, steps_per_episode=6)
    store.write_batch(list(reversed(batch)))  # stored newest first
    episode_id = batch[0].event.episode_id
    assert [e.step for e in store.episode(episode_id)] == [0, 1, 2, 3, 4, 5]
    assert store.episode("no-such-episode") == []


def test_episode_ids_oldest_first_within_window(store: ReplayStore) -> None:
    batch = make_batch(13, 30, steps_per_episode=10)
    store.write_batch(list(reversed(batch)))
    ids = [f"acme-medical/ep-13-{n}" for n in range(3)]
    assert store.episode_ids() == ids
    # Steps 8..11 span episodes 0 and 1 (3 minutes apart from START).
    window = TimeWindow(START + timedelta(minutes=24), START + timedelta(minutes=36))
    assert store.episode_ids(window) == ids[:2]


# --- transitions --------------------------------------------------------------------------


def test_transitions_link_consecutive_steps_and_end_episodes(store: ReplayStore) -> None:
    store.write_batch(make_batch(14, 8, steps_per_episode=4))
    counts = TransitionCounts()
    transitions = list(iter_transitions(store, counts=counts))
    assert len(transitions) == 8
    assert [(t.event.step, t.done) for t in transitions[:4]] == [
        (0, False),
        (1, False),
        (2, False),
        (3, True),
    ]
    for transition in transitions:
        if transition.done:
            assert transition.next_event is None
        else:
            assert transition.next_event is not None
            assert transition.next_event.step == transition.event.step + 1
            assert transition.next_event.episode_id == transition.event.episode_id
    assert (counts.episodes, counts.transitions, counts.gaps) == (2, 8, 0)


def test_a_gap_in_steps_truncates_the_trajectory(store: ReplayStore) -> None:
    batch = make_batch(15, 6, steps_per_episode=6)
    store.write_batch(batch[:2] + batch[3:])  # step 2 missing
    counts = TransitionCounts()
    got = [
        (t.event.step, None if t.next_event is None else t.next_event.step, t.done)
        for t in iter_transitions(store, counts=counts)
    ]
    assert got == [(0, 1, False), (1, None, False), (3, 4, False), (4, 5, False), (5, None, True)]
    assert counts.gaps == 1


def test_a_repeated_step_is_used_once_and_counted(store: ReplayStore) -> None:
    batch = make_batch(16, 3, steps_per_episode=3)
    again = json.loads(batch[1].raw)
    again["event_id"] = "6f1c2e0b-6d0a-4a53-9d84-2f0f6c3f5a10"  # same step, another event
    store.write_batch([*batch, incoming(encode(again))])
    counts = TransitionCounts()
    steps = [t.event.step for t in iter_transitions(store, counts=counts)]
    assert steps == [0, 1, 2]
    assert counts.duplicate_steps == 1


def test_transitions_in_a_window_keep_the_true_next_step(store: ReplayStore) -> None:
    store.write_batch(make_batch(17, 5, steps_per_episode=5))
    window = TimeWindow(START + timedelta(minutes=3), START + timedelta(minutes=9))  # steps 1, 2
    got = [
        (t.event.step, t.next_event and t.next_event.step) for t in iter_transitions(store, window)
    ]
    assert got == [(1, 2), (2, 3)]


# --- retention ----------------------------------------------------------------------------


def test_retention_by_age_deletes_only_older_events(store: ReplayStore) -> None:
    store.write_batch(make_batch(18, 40))
    now = START + timedelta(minutes=3 * 40)
    deleted = store.apply_retention(now, max_age=timedelta(minutes=3 * 15), max_events=None)
    assert deleted == 25
    assert store.count_events() == 15
    assert store.stats().first_decided_at == now - timedelta(minutes=3 * 15)
    assert store.apply_retention(now, max_age=timedelta(minutes=3 * 15), max_events=None) == 0


def test_retention_by_count_keeps_the_newest(store: ReplayStore, monkeypatch: Any) -> None:
    monkeypatch.setattr(sql_store, "RETENTION_CHUNK", 4)  # several chunks
    batch = make_batch(19, 30)
    store.write_batch(batch)
    deleted = store.apply_retention(START, max_age=None, max_events=11)
    assert deleted == 19
    kept = [e.event_id for e in store.iter_events()]
    assert kept == [i.event.event_id for i in batch[19:]]
    assert store.apply_retention(START, max_age=None, max_events=11) == 0


# --- durability, migrations, atomicity, failures -------------------------------------------


def test_reopening_keeps_data_and_migrations_are_idempotent(store_url: str) -> None:
    batch = make_batch(20, 25)
    first = open_store(store_url)
    first.write_batch(batch)
    first.close()
    for _ in range(2):
        reopened = open_store(store_url)
        try:
            assert reopened.count_events() == 25
            assert reopened.write_batch(batch).duplicates == 25
            assert isinstance(reopened, SqlReplayStore)
            with reopened.engine.connect() as conn:
                assert current_revision(conn) == head_revision()
        finally:
            reopened.close()


def test_a_batch_failing_midway_stores_nothing(store: ReplayStore) -> None:
    """A row the database refuses is the data's fault (StoreRejectedError, which the
    ingest loop isolates by bisection), and the batch stays atomic."""
    batch = make_batch(21, 30)
    broken = [*batch[:20], IncomingEvent(batch[20].event, None), *batch[21:]]  # type: ignore[arg-type]
    with pytest.raises(StoreRejectedError, match=r"(?i)null"):
        store.write_batch(broken)
    assert store.count_events() == 0
    assert store.write_batch(batch) == (30, 0)


def test_sigkill_after_acknowledged_batches_loses_nothing(store_url: str, tmp_path: Path) -> None:
    """A writer killed -9 mid-stream keeps every acknowledged batch and no partial one."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    writer = subprocess.Popen(
        [sys.executable, str(script), store_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        acknowledged = [writer.stdout.readline() for _ in range(3)]
        assert all(line.startswith("ok") for line in acknowledged), acknowledged
    finally:
        writer.kill()
        writer.wait(timeout=30)
    reopened = open_store(store_url)
    try:
        count = reopened.count_events()
        assert count >= 3 * 200
        assert count % 200 == 0  # whole batches only
    finally:
        reopened.close()


WRITER_SCRIPT = """
import sys
from dispatchloop.events import parse_outcome
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.settings import RetentionSettings
from dispatchloop.testing.events import encode, event_stream

store = open_store(sys.argv[1])
batch = []
for event in event_stream(22, 20_000):
    raw = encode(event)
    batch.append(IncomingEvent(parse_outcome(raw, 65_536), raw))
    if len(batch) == 200:
        store.write_batch(batch)
        print("ok", flush=True)
        batch = []
"""


def test_unreachable_postgresql_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailableError, match=r"Cannot open the replay store .*refused"):
        open_store("postgresql+psycopg://postgres@127.0.0.1:1/x")


def test_missing_store_is_not_created_without_create(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "replay.db"
    with pytest.raises(StoreMissingError, match="no replay store"):
        open_store(f"sqlite:///{path}", create=False)
    assert not path.parent.exists()
    created = open_store(f"sqlite:///{path}")
    created.close()
    assert path.is_file()


def test_configured_retention_applies_both_limits(store: ReplayStore) -> None:
    store.write_batch(make_batch(23, 30))
    now = START + timedelta(minutes=3 * 30)
    keep_all = RetentionSettings()
    assert apply_configured_retention(store, keep_all, now) == 0
    policy = RetentionSettings(max_age_days=(3 * 20) / (24 * 60), max_events=12)
    assert apply_configured_retention(store, policy, now) == 18  # 10 by age, 8 by count
    assert store.count_events() == 12


def test_postgresql_connection_killed_between_batches_is_survived(pg_url: str) -> None:
    """A PostgreSQL restart or failover drops pooled connections; the next batch reconnects."""
    store = open_store(pg_url)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        batch = make_batch(24, 40)
        store.write_batch(batch[:20])
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 1
        assert store.write_batch(batch) == (20, 20)
        assert store.count_events() == 40
    finally:
        store.close()
        admin.dispose()


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://u:secret@h/db", "postgresql+psycopg2://u:secret@h/db", "sqlite+x:///a"],
)
def test_unsupported_store_urls_are_explained_without_the_password(url: str) -> None:
    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url)
    assert "secret" not in str(caught.value)
    assert str(caught.value).endswith(".")


def test_plain_postgresql_scheme_uses_psycopg(pg_url: str) -> None:
    store = open_store(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        assert store.write_batch(make_batch(25, 3)) == (3, 0)
    finally:
        store.close()


def test_processes_opening_a_new_store_at_once_all_succeed(store_url: str) -> None:
    """Daemon and CLI may create the store together: the migration runs once, under a lock."""
    code = (
        "import sys; from dispatchloop.replay import open_store; "
        "s = open_store(sys.argv[1]); print(s.count_events()); s.close()"
    )
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", code, store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [opener.communicate(timeout=120) for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0, 0, 0], results
    assert [out.strip() for out, _ in results] == ["0"] * 4


def test_followers_read_in_store_order_from_a_tail_position(store: ReplayStore) -> None:
    first, second = make_batch(40, 30), make_batch(41, 20)
    assert store.tail_start(10) == 0 and store.events_after(0, 10) == []
    store.write_batch(first)
    store.write_batch(second)
    arrived = [item.event.event_id for item in first + second]
    start = store.tail_start(25)
    tail = store.events_after(start, 100)
    assert [stored.event.event_id for stored in tail] == arrived[-25:]
    positions = [stored.position for stored in tail]
    assert positions == sorted(positions) and positions[0] > start
    streamed = list(store.iter_events_after(start, batch_size=7))  # four pages, the last short
    assert streamed == tail
    assert list(store.iter_events_after(positions[-1])) == []
    assert store.events_after(start, 0) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(store.iter_events_after(start, batch_size=0))
    page = store.events_after(start, 10)
    assert [s.event.event_id for s in page] == arrived[-25:-15]
    assert store.events_after(page[-1].position, 5)[0].event.event_id == arrived[-15]
    assert store.tail_start(1_000) == 0
    assert store.events_after(positions[-1], 10) == []


def test_position_before_skips_the_older_rows_and_misses_no_newer_one(
    store: ReplayStore,
) -> None:
    """A canary starting at `cut` reads from `position_before(cut)`: every event decided
    since, however late it was stored, and none stored before the first of them."""
    start = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    cut = start + timedelta(minutes=3 * 20)  # events 20.. of each stream are decided since
    assert store.position_before(cut) == 0  # empty store
    before = make_batch(50, 20, start=start)  # all decided before the cut
    store.write_batch(before)
    last_before = store.events_after(0, 100)[-1].position
    assert store.position_before(cut) == last_before  # none decided since: start at the end
    mixed = make_batch(51, 40, start=start)  # 20 late arrivals from before, then 20 since
    store.write_batch(mixed)
    position = store.position_before(cut)
    read = [stored.event for stored in store.events_after(position, 1_000)]
    since = {e.event_id for e in read if e.decided_at >= cut}
    assert since == {item.event.event_id for item in mixed[20:]}
    assert {e.event_id for e in read}.isdisjoint(item.event.event_id for item in before)
    assert (
        store.position_before(cut + timedelta(days=365)) == store.events_after(0, 100)[-1].position
    )
