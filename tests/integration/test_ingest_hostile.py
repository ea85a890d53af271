"""A hostile producer against the real `dispatchloop ingest`, the real broker and both stores:
every kind of bad record reaches the DLQ exactly once with its reason, the valid records
around it are stored exactly once, and the partition moves past it."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import numpy as np
import pytest
import sqlalchemy as sa
from ingest_support import (
    committed_offsets,
    create_topic,
    end_offsets,
    expected_identity,
    ingest_env,
    letter_identity,
    log_lines,
    produce_hostile,
    read_dlq,
    start_ingest,
    stop,
    wait_until,
)
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

import dispatchloop.consumers.loop as loop_module
from dispatchloop.consumers.clients import make_consumer, make_dlq_producer, make_dlq_reader
from dispatchloop.consumers.loop import IngestLoop
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.replay import open_store
from dispatchloop.settings import Settings
from dispatchloop.testing.events import HOSTILE_KINDS, encode, event_stream
from dispatchloop.testing.postgres import admin_url

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stored(url: str) -> tuple[int, set[str]]:
    store = open_store(url)
    try:
        return store.count_events(), {str(e.event_id) for e in store.iter_events()}
    finally:
        store.close()


def assert_dead_letters_exactly_once(bootstrap: str, topic: str, invalid: Sequence[Any]) -> None:
    dead = read_dlq(bootstrap, f"{topic}.dlq")
    got = Counter(letter_identity(d.value, d.headers) for d in dead)
    assert got == Counter(expected_identity(value) for value, _ in invalid)
    assert Counter(d.reason for d in dead) == Counter(reason for _, reason in invalid)
    sources = [d.source for d in dead]
    assert len(set(sources)) == len(sources), "a record was dead-lettered twice"
    for letter in dead:
        assert letter.source is not None and letter.source[0] == topic
        assert letter.headers["dlq.detail"]
        if letter.headers.get("dlq.truncated") == b"true":
            assert int(letter.headers["dlq.original.size"]) > 1_000_000
            assert len(letter.value) == 65_536


def test_every_kind_of_bad_record_is_dead_lettered_once_and_the_partition_moves_on(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path
) -> None:
    create_topic(kafka_bootstrap, topic_name, 1)  # one partition: bad records between good ones
    stream = produce_hostile(kafka_bootstrap, topic_name, 400, seed=41)
    env = ingest_env(kafka_bootstrap, topic_name, store_url, f"g-{topic_name}")
    process = start_ingest(env, tmp_path / "ingest.log", "--idle-exit", "6")
    out, _ = process.communicate(timeout=240)
    assert process.returncode == 0, (tmp_path / "ingest.log").read_text()[-3_000:]
    summary = json.loads(out)
    assert summary["stored"] == 400 and summary["unresolved"] == 0
    assert summary["dead_letters"] == len(HOSTILE_KINDS)
    count, ids = stored(store_url)
    assert count == 400 and ids == stream.valid_ids
    assert_dead_letters_exactly_once(kafka_bootstrap, topic_name, stream.invalid)
    ends = end_offsets(kafka_bootstrap, topic_name)
    assert committed_offsets(kafka_bootstrap, topic_name, f"g-{topic_name}") == ends
    assert ends == {0: stream.records}
    # No hostile record made our code log an error (kafka-python's own transport errors,
    # e.g. a socket closed on a loaded host, are the client's and retried by it).
    ours = [
        line
        for line in log_lines(tmp_path / "ingest.log")
        if line["logger"].startswith("dispatchloop")
    ]
    assert not [line for line in ours if line["level"] == "ERROR"]


class _LaxKeys(NamedTuple):
    event_id: UUID
    episode_id: str
    step: int
    decided_at: Any


def test_rows_the_real_store_refuses_are_isolated_and_dead_lettered(
    kafka_bootstrap: str, topic_name: str, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store stage of the rule, with screening bypassed (as a screening bug would):
    the database itself refuses the rows, the loop isolates them by bisection."""
    create_topic(kafka_bootstrap, topic_name, 1)
    events = list(event_stream(43, 60))
    bad = {7: "ep\ud800", 33: "ep\ud800x"}  # UTF-8 cannot encode it: SQLite and psycopg refuse
    if store_url.startswith("postgresql"):
        bad[50] = "ep\u0000"  # PostgreSQL text refuses NUL
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    values = []
    for index, event in enumerate(events):
        raw = encode({**event, "episode_id": bad.get(index, event["episode_id"])})
        values.append(raw)
        producer.send(topic_name, value=raw, key=b"ep")
    producer.flush(timeout=30)
    producer.close()

    def lax_screen(raw: bytes | None, max_bytes: int) -> Any:
        from datetime import datetime

        event = json.loads(raw or b"{}")
        decided = datetime.fromisoformat(event["decided_at"])
        return _LaxKeys(UUID(event["event_id"]), event["episode_id"], event["step"], decided)

    monkeypatch.setattr(loop_module, "screen_outcome", lax_screen)
    settings = Settings(
        kafka={
            "bootstrap_servers": kafka_bootstrap,
            "topic": topic_name,
            "dlq_topic": f"{topic_name}.dlq",
            "group_id": f"g-{topic_name}",
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 1_000,
        },
        store_url=store_url,
    )
    store = open_store(store_url)
    registry = CollectorRegistry()
    loop = IngestLoop(
        settings,
        store,
        IngestMetrics(registry),
        consumer_factory=lambda listener: make_consumer(settings, listener),
        producer_factory=lambda: make_dlq_producer(settings),
        reader_factory=lambda: make_dlq_reader(settings),
        rng=np.random.default_rng(0),
    )
    try:
        totals = loop.run(max_events=len(values))
    finally:
        store.close()
    assert totals.stored == len(values) - len(bad) and totals.unresolved == 0
    dead = read_dlq(kafka_bootstrap, f"{topic_name}.dlq")
    assert sorted(d.source[2] for d in dead if d.source) == sorted(bad)
    assert {d.reason for d in dead} == {"unstorable"}
    assert [d.value for d in sorted(dead, key=lambda d: d.source or ())] == [
        values[i] for i in sorted(bad)
    ]
    count, _ = stored(store_url)
    assert count == len(values) - len(bad)
    assert committed_offsets(kafka_bootstrap, topic_name, f"g-{topic_name}") == {0: len(values)}
    assert registry.get_sample_value("dispatchloop_ingest_errors_total", {"kind": "store"}) == 0


N_SOAK = 6_000
SOAK_KILLS = 2


def test_soak_hostile_zoo_with_sigkills_stores_and_dead_letters_exactly(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path
) -> None:
    """1 % hostile records of every kind over 3 partitions, ingest SIGKILLed twice."""
    rng = np.random.default_rng(20261202)
    create_topic(kafka_bootstrap, topic_name, 3)
    create_topic(kafka_bootstrap, f"{topic_name}.dlq", 3)
    n_bad = N_SOAK // 100
    stream = produce_hostile(
        kafka_bootstrap,
        topic_name,
        N_SOAK,
        seed=44,
        per_kind=2,
        extra_bad=n_bad - 2 * len(HOSTILE_KINDS),
        partitions=3,
    )
    env = ingest_env(
        kafka_bootstrap,
        topic_name,
        store_url,
        f"g-{topic_name}",
        {"DISPATCHLOOP_KAFKA__MAX_POLL_RECORDS": "200"},
    )
    log_path = tmp_path / "ingest.log"
    at_kill = []
    for _ in range(SOAK_KILLS):
        process = start_ingest(env, log_path)
        before = len(stored(store_url)[1])
        wait_until(
            lambda before=before: stored(store_url)[0] > before,
            timeout_s=90,
            what="ingest to store something",
        )
        time.sleep(float(rng.uniform(0.2, 1.0)))
        assert stop(process, signal.SIGKILL) == -signal.SIGKILL
        at_kill.append(stored(store_url)[0])
    assert any(0 < n < N_SOAK for n in at_kill), at_kill
    final = start_ingest(env, log_path, "--idle-exit", "6")
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, log_path.read_text()[-3_000:]
    assert json.loads(out)["unresolved"] == 0
    count, ids = stored(store_url)
    assert count == N_SOAK and ids == stream.valid_ids
    assert_dead_letters_exactly_once(kafka_bootstrap, topic_name, stream.invalid)
    assert len(stream.invalid) == n_bad


def test_stopping_while_the_store_is_down_exits_1_and_the_next_run_stores_everything(
    kafka_bootstrap: str, topic_name: str, pg_url: str, tmp_path: Path
) -> None:
    """SIGTERM while every write fails: exit 1 with the unresolved count (never a silent 0),
    nothing committed past the failure, and a later run stores every event once."""
    create_topic(kafka_bootstrap, topic_name, 1)
    first = produce_hostile(kafka_bootstrap, topic_name, 300, seed=45, per_kind=0)
    env = ingest_env(kafka_bootstrap, topic_name, pg_url, f"g-{topic_name}")
    log_path = tmp_path / "ingest.log"
    process = start_ingest(env, log_path, "--idle-exit", "30")
    database = pg_url.rsplit("/", 1)[1]
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    try:
        wait_until(lambda: stored(pg_url)[0] == 300, timeout_s=90, what="the first 300 events")
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                ),
                {"d": database},
            )
        second = produce_hostile(kafka_bootstrap, topic_name, 200, seed=46, per_kind=0)
        wait_until(
            lambda: any("will retry" in line["msg"] for line in log_lines(log_path)),
            timeout_s=60,
            what="a failing write",
        )
        code = stop(process, signal.SIGTERM)
        out = process.stdout.read() if process.stdout else b"{}"
    finally:
        stop(process, signal.SIGKILL)
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    assert code == 1, log_path.read_text()[-2_000:]
    assert json.loads(out)["unresolved"] > 0
    assert "neither stored nor dead-lettered" in log_path.read_text()
    committed = committed_offsets(kafka_bootstrap, topic_name, f"g-{topic_name}")[0]
    assert committed is not None and committed <= 300
    again = start_ingest(env, log_path, "--idle-exit", "6")
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0 and json.loads(out)["unresolved"] == 0
    count, ids = stored(pg_url)
    assert count == 500 and ids == first.valid_ids | second.valid_ids
