"""Ingest throughput: dispatchloop's loop against the raw kafka-python peer, same broker, same run.

One local tansu broker, one 3-partition topic holding N realistic events
(`testing.events.event_stream`, ~1.9 KB, 9–14 candidates), then:

  (a)  peer: raw kafka-python group consumer + json.loads (the practical ceiling)
  (a') raw kafka-python + screen_outcome (the loop's validation alone, no store, no commit)
  (a'') raw kafka-python + parse_outcome (the full pydantic models, for comparison)
  (b0) (b) with CPython's default GC thresholds (what configure_gc_for_ingest buys)
  (b)  dispatchloop IngestLoop into SQLite (validate, durable write, DLQ check, commit)
  (c)  dispatchloop IngestLoop into PostgreSQL

Each consumer reads the whole topic with its own consumer group. Rates are taken
from the first non-empty poll to the last record, so the group join (~3 s on
tansu) is not counted for anyone. Prints a table; record it in BENCHMARKS.md.

    .venv/bin/python benchmarks/ingest.py [--events 200000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from dispatchloop.consumers.clients import make_consumer, make_dlq_producer, make_dlq_reader
from dispatchloop.consumers.loop import IngestLoop, configure_gc_for_ingest
from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.events import parse_outcome
from dispatchloop.progress import progress
from dispatchloop.replay import open_store
from dispatchloop.screening import screen_outcome
from dispatchloop.settings import Settings
from dispatchloop.testing.broker import start_broker
from dispatchloop.testing.events import encode, event_stream
from dispatchloop.testing.postgres import scratch_database

DEFAULT_GC_THRESHOLDS = (700, 10, 10)
GROUP_TIMEOUTS = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


class FirstPollClock:
    """Wraps a consumer and notes when its first non-empty poll returned (wall and CPU)."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self.first_records_at: float | None = None
        self.first_records_cpu: float = 0.0

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        batch = self._consumer.poll(*args, **kwargs)
        if batch and self.first_records_at is None:
            self.first_records_at = time.perf_counter()
            self.first_records_cpu = time.process_time()
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def produce(bootstrap: str, topic: str, n: int) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1)])
    admin.close()
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=256 * 1024
    )
    size = 0
    with progress("produce", total=n) as bar:
        for index, event in enumerate(event_stream(1, n)):
            value = encode(event)
            size += len(value)
            producer.send(topic, value=value, key=event["episode_id"].encode())
            if index % 5_000 == 4_999:
                bar.update(5_000)
        producer.flush(timeout=300)
    producer.close()
    return size // n


class Rate(NamedTuple):
    """Records per wall second, and CPU µs of this process (all threads) per record: the
    CPU figure is what other engineers' load on a shared machine disturbs least."""

    per_s: float
    cpu_us: float


def raw_peer(bootstrap: str, topic: str, n: int, handle: Callable[[bytes], Any]) -> Rate:
    consumer = FirstPollClock(
        KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=2_000,
            **GROUP_TIMEOUTS,
        )
    )
    seen = 0
    while seen < n:
        for records in consumer.poll(timeout_ms=500).values():
            for record in records:
                handle(record.value)
            seen += len(records)
    elapsed = time.perf_counter() - (consumer.first_records_at or 0.0)
    cpu = time.process_time() - consumer.first_records_cpu
    consumer.close(autocommit=False)
    return Rate(n / elapsed, cpu / n * 1e6)


def dispatchloop_ingest(bootstrap: str, topic: str, n: int, store_url: str) -> Rate:
    settings = Settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "topic": topic,
            "dlq_topic": f"{topic}.dlq",
            "group_id": f"bench-dl-{uuid.uuid4().hex[:8]}",
            **GROUP_TIMEOUTS,
        },
        store_url=store_url,
        metrics={"enabled": False},
    )
    store = open_store(store_url)
    clocks: list[FirstPollClock] = []

    def consumer_factory(listener: Any) -> FirstPollClock:
        clocks.append(FirstPollClock(make_consumer(settings, listener)))
        return clocks[-1]

    loop = IngestLoop(
        settings,
        store,
        IngestMetrics(CollectorRegistry()),
        consumer_factory=consumer_factory,
        producer_factory=lambda: make_dlq_producer(settings),
        reader_factory=lambda: make_dlq_reader(settings),
        rng=np.random.default_rng(0),
    )
    ended: list[tuple[float, float]] = []
    totals = loop.run(
        max_events=n,
        on_batch=lambda _r: ended.append((time.perf_counter(), time.process_time())),
    )
    store.close()
    assert totals.stored == n, f"stored {totals.stored} of {n}"
    wall = ended[-1][0] - (clocks[0].first_records_at or 0.0)
    return Rate(n / wall, (ended[-1][1] - clocks[0].first_records_cpu) / n * 1e6)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    n = args.events
    configure_gc_for_ingest()  # as `dispatchloop ingest` does; applies to every path measured
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="dispatchloop-bench-"))
    broker = start_broker(log_dir=work)
    rows: list[tuple[str, Rate]] = []
    try:
        topic = "bench.outcomes"
        mean_size = produce(broker.bootstrap, topic, n)
        rows.append(
            (
                "(a) kafka-python raw + json.loads [peer]",
                raw_peer(broker.bootstrap, topic, n, json.loads),
            )
        )
        rows.append(
            (
                "(a') kafka-python raw + screen_outcome",
                raw_peer(broker.bootstrap, topic, n, lambda v: screen_outcome(v, 65_536)),
            )
        )
        rows.append(
            (
                "(a'') kafka-python raw + parse_outcome (pydantic models)",
                raw_peer(broker.bootstrap, topic, n, lambda v: parse_outcome(v, 65_536)),
            )
        )
        gc.unfreeze()
        gc.set_threshold(*DEFAULT_GC_THRESHOLDS)
        rows.append(
            (
                "(b0) dispatchloop ingest → SQLite, CPython's default GC thresholds",
                dispatchloop_ingest(broker.bootstrap, topic, n, f"sqlite:///{work / 'gc.db'}"),
            )
        )
        configure_gc_for_ingest()
        rows.append(
            (
                "(b) dispatchloop ingest → SQLite",
                dispatchloop_ingest(broker.bootstrap, topic, n, f"sqlite:///{work / 'replay.db'}"),
            )
        )
        if not args.skip_postgres:
            with scratch_database("dl_bench") as url:
                rows.append(
                    (
                        "(c) dispatchloop ingest → PostgreSQL",
                        dispatchloop_ingest(broker.bootstrap, topic, n, url),
                    )
                )
    finally:
        broker.stop()
    load_after = os.getloadavg()
    peer = rows[0][1].per_s
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"{n} events, mean {mean_size} B, 3 partitions, local tansu broker")
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} (uptime: {uptime()})"
    )
    print("\n| path | msg/s | ratio to (a) | CPU µs/record |\n|---|---|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate.per_s:,.0f} | {rate.per_s / peer:.2f} | {rate.cpu_us:.1f} |")


if __name__ == "__main__":
    main()
