"""The replay-store contract (replay/base.py), one suite run on SQLite and PostgreSQL.

Every test takes `store_url` (tests/conftest.py), which is parametrised over both
backends with a fresh database per test, as Optuna's pytest_storages does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.replay import IncomingEvent, ReplayStore, open_store
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
