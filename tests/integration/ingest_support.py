"""Helpers for the ingest integration tests: topics, producing a mixed stream, running the
real `dispatchloop ingest` process, and reading back the store and the DLQ."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import TopicPartition

from dispatchloop.consumers.deadletter import (
    HEADER_ORIGINAL_SHA256,
    HEADER_REASON,
    HEADER_TRUNCATED,
    source_of,
)
from dispatchloop.testing.events import (
    HOSTILE_KINDS,
    MALFORMED_KINDS,
    encode,
    event_stream,
    hostile_record,
    malformed_record,
)

FAST_GROUP = {"session_timeout_ms": 6_000, "heartbeat_interval_ms": 1_000}


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


@dataclass
class MixedStream:
    """What was produced: valid event ids, and invalid records as (value, reason)."""

    valid_ids: set[str] = field(default_factory=set)
    invalid: list[tuple[bytes | None, str]] = field(default_factory=list)
    records: int = 0
    duplicates_sent: int = 0


def produce_mixed(
    bootstrap: str,
    topic: str,
    n_valid: int,
    *,
    seed: int,
    duplicate_share: float = 0.05,
    malformed_per_kind: int = 4,
) -> MixedStream:
    """n_valid events, some re-sent byte for byte, and malformed records of every kind."""
    rng = np.random.default_rng(seed)
    stream = MixedStream()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    events = list(event_stream(seed, n_valid))
    malformed_at = {
        int(i): kind
        for kind in MALFORMED_KINDS
        for i in rng.choice(n_valid, size=malformed_per_kind, replace=False)
    }
    sent: list[tuple[bytes, bytes]] = []
    for index, event in enumerate(events):
        value, key = encode(event), event["episode_id"].encode()
        producer.send(topic, value=value, key=key)
        stream.valid_ids.add(event["event_id"])
        sent.append((key, value))
        if rng.random() < duplicate_share:
            dup_key, dup_value = sent[int(rng.integers(0, len(sent)))]
            producer.send(topic, value=dup_value, key=dup_key)
            stream.duplicates_sent += 1
        if index in malformed_at:
            bad = malformed_record(rng, malformed_at[index], event)
            producer.send(topic, value=bad, key=key)
            stream.invalid.append((bad, malformed_at[index]))
    producer.flush(timeout=60)
    producer.close()
    stream.records = n_valid + stream.duplicates_sent + len(stream.invalid)
    return stream


def ingest_env(
    bootstrap: str, topic: str, store_url: str, group: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env.update(
        {
            "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "DISPATCHLOOP_KAFKA__TOPIC": topic,
            "DISPATCHLOOP_KAFKA__DLQ_TOPIC": f"{topic}.dlq",
            "DISPATCHLOOP_KAFKA__GROUP_ID": group,
            "DISPATCHLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "DISPATCHLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "DISPATCHLOOP_KAFKA__MAX_POLL_RECORDS": "500",
            "DISPATCHLOOP_STORE_URL": store_url,
            "DISPATCHLOOP_METRICS__PORT": "0",
            "DISPATCHLOOP_LOG_FORMAT": "json",
            "DISPATCHLOOP_INGEST__RECONNECT_BACKOFF_INITIAL_S": "0.2",
            "DISPATCHLOOP_INGEST__RECONNECT_BACKOFF_MAX_S": "2",
        }
    )
    env.update(extra or {})
    return env


def start_ingest(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """The real CLI as a child process; stderr (JSON log lines) goes to log_path."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dispatchloop.cli", "ingest", "--json", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
        )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
    """Send `sig` to exactly this process and wait (bounded) for it to exit."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise


def log_lines(log_path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def metrics_port(log_path: Path, timeout_s: float = 30) -> int:
    """The port the process logged for its metrics endpoint (METRICS__PORT=0)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_lines(log_path):
            if "metrics_port" in line:
                return int(line["metrics_port"])
        time.sleep(0.1)
    raise TimeoutError(f"no metrics address logged in {log_path}")


def http_get(url: str, timeout_s: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


@dataclass
class DeadLetterRecord:
    value: bytes
    reason: str
    source: tuple[str, int, int] | None
    headers: dict[str, bytes]


def read_topic_all(bootstrap: str, topic: str, idle_ms: int = 3_000) -> list[Any]:
    """Every record of a topic from the beginning, until no record arrives for idle_ms."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while True:
            batch = consumer.poll(timeout_ms=idle_ms)
            if not batch:
                return records
            for recs in batch.values():
                records.extend(recs)
    finally:
        consumer.close()


def read_dlq(bootstrap: str, dlq_topic: str) -> list[DeadLetterRecord]:
    return [
        DeadLetterRecord(
            value=r.value,
            reason=dict(r.headers)[HEADER_REASON].decode(),
            source=source_of(r.headers),
            headers=dict(r.headers),
        )
        for r in read_topic_all(bootstrap, dlq_topic)
    ]


def expected_reasons(stream: MixedStream) -> Counter[str]:
    return Counter(reason for _, reason in stream.invalid)


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2
) -> None:
    """Poll `predicate` until true; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --- hostile streams: every kind of the zoo, and how to recognise its dead letter ----------


def produce_hostile(
    bootstrap: str,
    topic: str,
    n_valid: int,
    *,
    seed: int,
    per_kind: int = 1,
    extra_bad: int = 0,
    partitions: int | None = None,
) -> MixedStream:
    """n_valid events with `per_kind` records of every hostile kind (plus `extra_bad` drawn at
    random) inserted at random places; keys spread them over the partitions."""
    rng = np.random.default_rng(seed)
    stream = MixedStream()
    kinds = [kind for kind in HOSTILE_KINDS for _ in range(per_kind)]
    kinds += [str(k) for k in rng.choice(sorted(HOSTILE_KINDS), size=extra_bad)]
    bad_at: dict[int, list[str]] = {}
    for kind in kinds:
        bad_at.setdefault(int(rng.integers(0, n_valid)), []).append(kind)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    for index, event in enumerate(event_stream(seed, n_valid)):
        key = event["episode_id"].encode()
        for kind in bad_at.get(index, []):
            bad = hostile_record(rng, kind, event)
            producer.send(topic, value=bad, key=key, partition=_partition(key, partitions))
            stream.invalid.append((bad, HOSTILE_KINDS[kind]))
        producer.send(topic, value=encode(event), key=key, partition=_partition(key, partitions))
        stream.valid_ids.add(event["event_id"])
    producer.flush(timeout=120)
    producer.close()
    stream.records = n_valid + len(stream.invalid)
    return stream


def _partition(key: bytes, partitions: int | None) -> int | None:
    return None if partitions is None else int(hashlib.sha256(key).digest()[0]) % partitions


def letter_identity(value: bytes | None, headers: dict[str, bytes]) -> tuple[str, Any]:
    """What identifies a dead letter's record: its bytes, or for a truncated one, the sha256."""
    if headers.get(HEADER_TRUNCATED) == b"true":
        return "sha256", headers[HEADER_ORIGINAL_SHA256].decode()
    return "value", value


def expected_identity(value: bytes | None) -> tuple[str, Any]:
    """The identity the dead letter of `value` must carry (truncated beyond the DLQ limit)."""
    if value is not None and len(value) > 900_000:
        return "sha256", hashlib.sha256(value).hexdigest()
    return "value", value


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        return {p: consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        consumer.close(autocommit=False)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The real log-end offsets (the last record + 1: tansu's end_offsets() read low)."""
    ends: dict[int, int] = {}
    for record in read_topic_all(bootstrap, topic, idle_ms=2_000):
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends
