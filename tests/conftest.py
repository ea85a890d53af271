"""Shared fixtures: a real Kafka-compatible broker and a real PostgreSQL per test.

Set DISPATCHLOOP_TEST_KAFKA_BOOTSTRAP to use your own Kafka; otherwise a local
tansu broker is started once per session. Set DISPATCHLOOP_TEST_PG_URL to point
at another PostgreSQL server (admin connection; a database is created per test).
A missing service fails the test: integration tests are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatchloop.testing.broker import start_broker
from dispatchloop.testing.postgres import scratch_database


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("DISPATCHLOOP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = start_broker(log_dir=tmp_path_factory.mktemp("broker"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_name() -> str:
    """A fresh topic per test so tests never see each other's records."""
    return f"dispatch.outcomes.t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with scratch_database("dl_test") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'replay.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over both replay-store backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))
