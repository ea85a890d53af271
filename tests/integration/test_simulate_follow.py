"""`simulate --follow` on the real broker: the simulator decides through serving, logs the
deciding version and its exact propensity in every outcome event, and keeps running
across a promotion made while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from serving_support import PublishingRegistry, make_served_model, wait_for
from test_sim_simulate import _consume_all

from dispatchloop.events import DecideRequest, DispatchOutcomeEvent, parse_outcome
from dispatchloop.serving.dispatcher import Routing, decide
from dispatchloop.serving.loader import load_from_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = 900
RATE = 150.0
EPSILON = 0.1


def test_simulate_follow_logs_the_serving_version_and_survives_a_promotion(
    tmp_path: Path, kafka_bootstrap: str, topic_name: str
) -> None:
    models_topic = f"dispatch.models.t{uuid.uuid4().hex[:12]}"
    published = PublishingRegistry(tmp_path, kafka_bootstrap, models_topic)
    v1, v2 = (published.register(make_served_model(tmp_path / f"m{s}", s)) for s in (1, 2))
    published.promote(v1)
    env = {
        **os.environ,
        "DISPATCHLOOP_DATA_DIR": str(tmp_path),
        "DISPATCHLOOP_STORE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DISPATCHLOOP_KAFKA__TOPIC": topic_name,
        "DISPATCHLOOP_KAFKA__MODELS_TOPIC": models_topic,
    }
    command = [sys.executable, "-m", "dispatchloop.cli", "simulate", "--follow", "--json",
               "--events", str(EVENTS), "--rate", str(RATE), "--epsilon", str(EPSILON),
               "--seed", "3"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _produced(kafka_bootstrap, topic_name) >= 150, 60, "first events")
        published.promote(v2)  # mid-run: the simulator keeps going and switches
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
        published.close()
    assert process.returncode == 0, stderr.decode()[-2000:]
    summary = json.loads(stdout)
    assert summary["events"] == EVENTS
    assert summary["policy"] == "served"
    assert set(summary["decisions_by_version"]) == {v1, v2}

    records = _consume_all(kafka_bootstrap, topic_name, EVENTS)
    events = [parse_outcome(value, 65_536) for _, value in records]
    assert all(isinstance(e, DispatchOutcomeEvent) for e in events)
    models = {v: load_from_registry(published.registry, v) for v in (v1, v2)}
    counts = {v1: 0, v2: 0}
    rng = np.random.default_rng(0)
    for event in events:
        assert isinstance(event, DispatchOutcomeEvent)
        version = event.action.model_version
        assert version in models and event.action.policy == "dqn"
        counts[version] += 1
        request = DecideRequest(
            decided_at=event.decided_at, booking=event.booking, candidates=event.candidates,
            company_id=event.company_id,
        )  # fmt: skip
        greedy = decide(request, Routing(models[version]), 0.0, rng).driver_id
        uniform = EPSILON / sum(c.eligible for c in event.candidates)
        expected = (1 - EPSILON) + uniform if event.action.driver_id == greedy else uniform
        assert event.action.propensity == pytest.approx(expected, abs=1e-12)
    assert counts == summary["decisions_by_version"]
    assert min(counts.values()) > 0


def _produced(bootstrap: str, topic: str) -> int:
    """Records on the topic so far (tansu's end offsets may read low: a lower bound)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ids = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in ids]
        return sum(consumer.end_offsets(partitions).values()) if partitions else 0
    finally:
        consumer.close()
