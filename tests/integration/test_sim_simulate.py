"""`dispatchloop simulate` against the real broker; Scenario.fit on a real SQLite store."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.replay import IncomingEvent, TimeWindow, open_store
from dispatchloop.settings import KafkaSettings, RewardSettings
from dispatchloop.sim.producer import produce, resolve_policy, simulated_events
from dispatchloop.sim.scenario import Scenario

pytestmark = pytest.mark.integration


def _run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=1_000)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend((r.key, r.value) for r in batch)
        return records
    finally:
        consumer.close()


def test_simulate_produces_valid_events_to_the_broker(
    kafka_bootstrap: str, topic_name: str
) -> None:
    env = {
        "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DISPATCHLOOP_KAFKA__TOPIC": topic_name,
    }
    args = ["simulate", "--events", "150", "--policy", "greedy", "--epsilon", "0.1"]
    result = _run_cli([*args, "--seed", "7", "--start", "2026-11-20", "--json"], env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == 150 and summary["topic"] == topic_name

    records = _consume_all(kafka_bootstrap, topic_name, 150)
    assert len(records) == 150
    parsed = [parse_outcome(value, max_bytes=65_536) for _, value in records]
    assert all(isinstance(p, DispatchOutcomeEvent) for p in parsed), parsed[:3]
    events = [p for p in parsed if isinstance(p, DispatchOutcomeEvent)]
    assert len({e.event_id for e in events}) == 150
    assert all(key == e.episode_id.encode() for (key, _), e in zip(records, events, strict=True))
    assert {e.action.policy for e in events} == {"greedy-eps0.1"}
    assert all(e.action.propensity is not None for e in events)
    assert min(e.decided_at for e in events).date().isoformat() == "2026-11-20"
    # The same events, in episode order, as simulated_events gives without Kafka.
    expected = simulated_events(
        Scenario.default(),
        RewardSettings(),
        resolve_policy("greedy", 7),
        150,
        seed=7,
        epsilon=0.1,
        start=datetime(2026, 11, 20, tzinfo=UTC),
    )
    assert {e["event_id"] for e in expected} == {str(e.event_id) for e in events}


def test_simulate_bad_policy_exits_2_with_one_sentence(
    kafka_bootstrap: str, topic_name: str
) -> None:
    env = {
        "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DISPATCHLOOP_KAFKA__TOPIC": topic_name,
    }
    result = _run_cli(["simulate", "--events", "5", "--policy", "no-such-model"], env)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert "neither greedy, random, hindsight, rollout nor a model directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad_start = _run_cli(["simulate", "--events", "5", "--start", "yesterday"], env)
    assert bad_start.returncode == 2
    assert "--start 'yesterday' is not a date" in bad_start.stderr


def test_scenario_fit_recovers_known_parameters(sqlite_url: str) -> None:
    truth = dataclasses.replace(
        Scenario.default(),
        n_drivers=12,
        bookings_per_episode=25,
        priority_mix=(0.5, 0.3, 0.2),
        lead_time_min=8.0,
        lead_time_mean_extra_min=10.0,
        window_min=20.0,
        travel_speed_kmh=40.0,
        service_min=6.0,
        unavailable_prob=0.15,
        equipped_share=0.5,
        cancel_base=0.02,
        cancel_per_delay_min=0.02,
        cancel_max=1.0,
        arrival_rate_by_hour=tuple(
            12.0 if h in (9, 10) else 1.0 if h == 11 else 0.0 for h in range(24)
        ),
    )
    events = simulated_events(
        truth, RewardSettings(), resolve_policy("random", 1), 125 * 25, seed=1
    )
    store = open_store(sqlite_url)
    try:
        batch = [
            IncomingEvent(DispatchOutcomeEvent.model_validate(e), json.dumps(e).encode())
            for e in events
        ]
        assert store.write_batch(batch).inserted == len(batch)
        fitted = Scenario.fit(store, TimeWindow())
    finally:
        store.close()

    assert fitted.n_drivers == 12 and fitted.bookings_per_episode == 25
    np.testing.assert_allclose(fitted.priority_mix, truth.priority_mix, atol=0.03)
    assert fitted.lead_time_min == pytest.approx(8.0, abs=0.1)
    assert fitted.lead_time_mean_extra_min == pytest.approx(10.0, rel=0.08)
    assert fitted.window_min == pytest.approx(20.0)
    assert fitted.travel_speed_kmh == pytest.approx(40.0, rel=0.02)
    assert fitted.service_min == pytest.approx(6.0, abs=0.1)
    assert fitted.unavailable_prob == pytest.approx(0.15, abs=0.02)
    assert fitted.equipped_share == pytest.approx(0.5, abs=0.08)
    assert fitted.cancel_base == pytest.approx(0.02, abs=0.02)
    assert fitted.cancel_per_delay_min == pytest.approx(0.02, abs=0.008)
    rates = np.asarray(fitted.arrival_rate_by_hour)
    assert rates.sum() == pytest.approx(25.0)
    np.testing.assert_allclose(rates[[9, 10, 11]] / 25, [12 / 25, 12 / 25, 1 / 25], atol=0.03)
    assert rates[:9].sum() == 0 and rates[12:].sum() == 0
    # The fitted world is usable as is.
    assert fitted == Scenario.from_dict(json.loads(fitted.to_json()))


def test_produce_paces_events_at_the_requested_rate(kafka_bootstrap: str, topic_name: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic=topic_name)
    events = simulated_events(
        Scenario.default(), RewardSettings(), resolve_policy("random", 3), 20, seed=3
    )
    result = produce(events, kafka, total=20, rate=40.0, show_progress=False)
    assert result.events == 20
    assert result.seconds >= 19 / 40.0 * 0.95  # paced: never faster than asked (no upper bound)
    assert len(_consume_all(kafka_bootstrap, topic_name, 20)) == 20
