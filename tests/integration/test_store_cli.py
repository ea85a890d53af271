"""`dispatchloop store stats` against a real SQLite store and an unreachable PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatchloop.cli import EXIT_BAD_CONFIG, app
from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.testing.events import encode, event_stream

pytestmark = pytest.mark.integration


def _fill(url: str, n: int) -> None:
    batch = []
    for event in event_stream(31, n, steps_per_episode=10):
        raw = encode(event)
        parsed = parse_outcome(raw, 65_536)
        assert isinstance(parsed, DispatchOutcomeEvent)
        batch.append(IncomingEvent(parsed, raw))
    store = open_store(url)
    try:
        store.write_batch(batch)
    finally:
        store.close()


def test_store_stats_json_reports_the_stored_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    _fill(url, 25)
    result = CliRunner().invoke(
        app, ["store", "stats", "--json"], env={"DISPATCHLOOP_STORE_URL": url}
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["events"] == 25
    assert document["episodes"] == 3
    assert document["first_decided_at"] == "2026-11-23T06:00:00Z"
    assert document["last_decided_at"] == "2026-11-23T07:12:00Z"
    assert document["size_bytes"] > 25 * 1_000


def test_store_stats_human_output(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replay.db'}"
    _fill(url, 12)
    result = CliRunner().invoke(app, ["store", "stats"], env={"DISPATCHLOOP_STORE_URL": url})
    assert result.exit_code == 0, result.output
    assert "events:   12" in result.stdout
    assert "episodes: 2" in result.stdout


def test_store_stats_of_a_store_never_created_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    env = {"DISPATCHLOOP_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(app, ["store", "stats", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"] == 0
    assert not (tmp_path / "data").exists()


def test_unreachable_postgresql_exits_2_with_one_sentence() -> None:
    env = {"DISPATCHLOOP_STORE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"}
    result = CliRunner().invoke(app, ["store", "stats", "--json"], env=env)
    assert result.exit_code == EXIT_BAD_CONFIG
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "Cannot open the replay store" in message
    assert message.count("\n") == 0 and message.endswith(".")
