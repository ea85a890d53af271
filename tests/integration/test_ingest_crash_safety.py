"""The real `dispatchloop ingest` process against the real broker and both store backends:
SIGKILLed at random moments and restarted, it must end with every valid event stored once
and every invalid record in the DLQ once."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ingest_support import (
    create_topic,
    ingest_env,
    log_lines,
    produce_mixed,
    read_dlq,
    start_ingest,
    stop,
    wait_until,
)

from dispatchloop.replay import open_store
from dispatchloop.testing.events import MALFORMED_KINDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_VALID = 10_000
KILLS = 3


def stored_ids(store_url: str) -> tuple[int, set[str]]:
    store = open_store(store_url)
    try:
        return store.count_events(), {str(e.event_id) for e in store.iter_events()}
    finally:
        store.close()


def processed_so_far(store_url: str) -> int:
    store = open_store(store_url)
    try:
        return store.count_events()
    finally:
        store.close()


def owned_assignments(log_path: Path) -> int:
    """How many times the process logged a non-empty partition assignment."""
    return sum(
        1
        for line in log_lines(log_path)
        if line["msg"] == "partitions assigned" and line["partitions"]
    )


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(20261123)
    create_topic(kafka_bootstrap, topic_name, 3)
    create_topic(kafka_bootstrap, f"{topic_name}.dlq", 3)
    stream = produce_mixed(kafka_bootstrap, topic_name, N_VALID, seed=11, malformed_per_kind=6)
    env = ingest_env(
        kafka_bootstrap,
        topic_name,
        store_url,
        f"g-{topic_name}",
        {"DISPATCHLOOP_KAFKA__MAX_POLL_RECORDS": "200"},
    )
    log_path = tmp_path / "ingest.log"
    processed_at_kill = []
    for kill in range(KILLS):
        process = start_ingest(env, log_path)
        joined = owned_assignments(log_path)
        wait_until(
            lambda joined=joined: owned_assignments(log_path) > joined,
            timeout_s=60,
            what="the consumer to get partitions",
        )
        time.sleep(float(rng.uniform(0.3, 1.5)))
        assert stop(process, signal.SIGKILL) == -signal.SIGKILL, f"kill {kill} came too late"
        processed_at_kill.append(processed_so_far(store_url))
    # At least one kill landed mid-stream (some events stored, not all).
    assert any(0 < stored < N_VALID for stored in processed_at_kill), processed_at_kill
    final = start_ingest(env, log_path, "--idle-exit", "6")
    out, _ = final.communicate(timeout=240)
    assert final.returncode == 0, log_path.read_text()[-2_000:]
    assert json.loads(out)["stored"] == N_VALID - processed_at_kill[-1]

    count, ids = stored_ids(store_url)
    assert count == N_VALID
    assert ids == stream.valid_ids

    dead = read_dlq(kafka_bootstrap, f"{topic_name}.dlq")
    assert Counter(d.value for d in dead) == Counter(value for value, _ in stream.invalid)
    assert Counter(d.reason for d in dead) == Counter({kind: 6 for kind in MALFORMED_KINDS})
    for letter in dead:
        assert letter.source is not None and letter.source[0] == topic_name
        assert letter.headers["dlq.detail"]
    sources = [d.source for d in dead]
    assert len(set(sources)) == len(sources)
