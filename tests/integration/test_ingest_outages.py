"""Outages against a broker of our own (SIGSTOP freezes it like a network cut):
the ingest process survives a broker outage, and a dead-letter topic that cannot be
reached never lets the loop commit past the undeliverable record."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ingest_support import (
    create_topic,
    http_get,
    ingest_env,
    metrics_port,
    produce_mixed,
    read_dlq,
    start_ingest,
    stop,
    wait_until,
)
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dispatchloop.consumers.clients import make_consumer, make_dlq_producer, make_dlq_reader
from dispatchloop.consumers.loop import IngestLoop
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.replay import open_store
from dispatchloop.settings import Settings
from dispatchloop.testing.broker import LocalBroker, free_port, start_broker
from dispatchloop.testing.events import encode, event_stream
from dispatchloop.testing.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    broker = start_broker(log_dir=tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


def stored_ids(url: str) -> set[str]:
    store = open_store(url)
    try:
        return {str(e.event_id) for e in store.iter_events()}
    finally:
        store.close()


def test_broker_outage_is_survived_and_nothing_is_lost(
    own_broker: LocalBroker, sqlite_url: str, tmp_path: Path
) -> None:
    bootstrap, topic = own_broker.bootstrap, "outage.events"
    create_topic(bootstrap, topic, 3)
    before = produce_mixed(bootstrap, topic, 3_000, seed=21, malformed_per_kind=2)
    env = ingest_env(
        bootstrap, topic, sqlite_url, "g-outage", {"DISPATCHLOOP_KAFKA__REQUEST_TIMEOUT_MS": "8000"}
    )
    process = start_ingest(env, tmp_path / "ingest.log")
    try:
        wait_until(lambda: len(stored_ids(sqlite_url)) > 0, timeout_s=60, what="first events")
        own_broker.pause()
        try:
            time.sleep(10)
            assert process.poll() is None, "ingest died during the outage"
        finally:
            own_broker.resume()
        after = produce_mixed(bootstrap, topic, 1_000, seed=22, malformed_per_kind=1)
        expected = before.valid_ids | after.valid_ids
        wait_until(
            lambda: stored_ids(sqlite_url) == expected, timeout_s=180, what="every event stored"
        )
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0
    dead = read_dlq(bootstrap, f"{topic}.dlq")
    assert Counter(d.value for d in dead) == Counter(
        value for value, _ in before.invalid + after.invalid
    )
    summary = json.loads(process.stdout.read() if process.stdout else b"{}")
    assert summary["stored"] == 4_000


def test_undeliverable_dead_letter_is_not_committed_past(
    own_broker: LocalBroker, sqlite_url: str
) -> None:
    bootstrap, topic = own_broker.bootstrap, "dlqfail.events"
    create_topic(bootstrap, topic, 1)
    events = [encode(e) for e in event_stream(31, 40)]
    bad_offset = 25
    values = [*events[:bad_offset], b'{"schema_version": 1, "truncated', *events[bad_offset:]]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(topic, value=value, key=b"ep")
    producer.flush(timeout=30)
    producer.close()

    settings = Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "dlq_topic": f"{topic}.dlq",
            "group_id": "g-dlqfail",
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 1_000,
        },
        ingest={"reconnect_backoff_initial_s": 0.1, "reconnect_backoff_max_s": 0.5},
        store_url=sqlite_url,
    )
    unreachable = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": [f"127.0.0.1:{free_port()}"]}
            )
        }
    )
    committed_while_failing: list[int | None] = []

    def producer_factory() -> Any:
        if len(committed_while_failing) < 2:
            committed_while_failing.append(committed_offset(bootstrap, topic, "g-dlqfail"))
            return make_dlq_producer(unreachable)  # raises: no broker there
        return make_dlq_producer(settings)

    store = open_store(sqlite_url)
    registry = CollectorRegistry()
    loop = IngestLoop(
        settings,
        store,
        IngestMetrics(registry),
        consumer_factory=lambda listener: make_consumer(settings, listener),
        producer_factory=producer_factory,
        reader_factory=lambda: make_dlq_reader(settings),
        rng=np.random.default_rng(0),
    )
    try:
        totals = loop.run(max_events=len(values))
    finally:
        store.close()
    assert len(committed_while_failing) == 2
    assert all(c is None or c <= bad_offset for c in committed_while_failing)
    assert committed_offset(bootstrap, topic, "g-dlqfail") == len(values)
    assert registry.get_sample_value("dispatchloop_ingest_errors_total", {"kind": "dlq"}) == 2
    dead = read_dlq(bootstrap, f"{topic}.dlq")
    assert [(d.value, d.source) for d in dead] == [
        (b'{"schema_version": 1, "truncated', (topic, 0, bad_offset))
    ]
    assert totals.stored == 40 and len(stored_ids(sqlite_url)) == 40


def committed_offset(bootstrap: str, topic: str, group: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset = consumer.committed(TopicPartition(topic, 0))
        return None if offset is None else int(offset)
    finally:
        consumer.close(autocommit=False)


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[LocalBroker, TcpProxy]]:
    """A broker that advertises a proxy's port: every client connection goes through it."""
    proxy_port = free_port()
    broker = start_broker(log_dir=tmp_path, advertised_port=proxy_port)
    proxy = TcpProxy(broker.port, port=proxy_port)
    try:
        yield broker, proxy
    finally:
        proxy.close()
        broker.stop()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return status, json.loads(body)


def metric(port: int, name: str) -> float:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


READINESS_BOUND_S = 30.0


def test_readyz_turns_503_during_a_broker_outage_and_200_after_nothing_lost(
    proxied_broker: tuple[LocalBroker, TcpProxy], sqlite_url: str, tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    bootstrap, topic = f"127.0.0.1:{proxy.port}", "readyz.events"
    create_topic(bootstrap, topic, 3)
    before = produce_mixed(bootstrap, topic, 1_500, seed=51, malformed_per_kind=1)
    env = ingest_env(bootstrap, topic, sqlite_url, "g-readyz")
    log_path = tmp_path / "ingest.log"
    process = start_ingest(env, log_path)
    try:
        port = metrics_port(log_path)
        wait_until(lambda: readyz(port)[0] == 200, timeout_s=90, what="/readyz 200")
        wait_until(lambda: len(stored_ids(sqlite_url)) == 1_500, timeout_s=120, what="1,500")

        proxy.refuse()
        cut_at, cpu_at_cut = time.monotonic(), cpu_seconds(process.pid)
        wait_until(lambda: readyz(port)[0] == 503, timeout_s=READINESS_BOUND_S, what="503")
        print(f"/readyz 503 after {time.monotonic() - cut_at:.1f} s of outage")
        status, body = readyz(port)
        assert status == 503 and not body["broker_reachable"], body
        assert any("broker" in reason for reason in body["reasons"]), body
        time.sleep(max(0.0, 40 - (time.monotonic() - cut_at)))  # an outage of 40 s
        assert process.poll() is None, "ingest died during the outage"
        assert broker.process.poll() is None, "the broker itself must stay up"
        assert metric(port, "dispatchloop_consumer_unreachable_seconds") >= 30
        outage_cpu = (cpu_seconds(process.pid) - cpu_at_cut) / (time.monotonic() - cut_at)

        proxy.accept()
        wait_until(lambda: readyz(port)[0] == 200, timeout_s=90, what="/readyz 200 again")
        assert metric(port, "dispatchloop_consumer_unreachable_seconds") < 15
        after = produce_mixed(bootstrap, topic, 1_000, seed=52, malformed_per_kind=1)
        expected = before.valid_ids | after.valid_ids
        wait_until(lambda: stored_ids(sqlite_url) == expected, timeout_s=120, what="all stored")
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0, log_path.read_text()[-3_000:]
    assert outage_cpu < 0.25, f"{outage_cpu:.0%} of a core while the broker was unreachable"
    dead = read_dlq(bootstrap, f"{topic}.dlq")
    assert Counter(d.value for d in dead) == Counter(
        value for value, _ in before.invalid + after.invalid
    )
