"""Promotion events reach `dispatch.models` through the outbox: with a real broker, with
the broker frozen mid-promotion, and with real `dispatchloop models` processes
SIGKILLed at 20 seeded points between staging and publication.

An independent consumer (group-less, from the beginning) reads the topic and
deduplicates by `event_id`, as a dispatch system would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from ingest_support import read_topic_all
from registry_support import make_model, passing_record

from dispatchloop.events import ModelPromotedEvent
from dispatchloop.registry import OutboxPublisher, SqlRegistry, make_producer, open_registry
from dispatchloop.testing.broker import start_broker

pytestmark = pytest.mark.integration

ACTOR = "tester@host"
REGISTER_POINTS = ("register.staged", "register.renamed", "register.inserted", "register.committed")
PROMOTE_POINTS = (
    "promote.verified",
    "move.locked",
    "move.alias_written",
    "move.history_written",
    "move.outbox_written",
    "move.committed",
    "publish.sent",
    "publish.acked",
    "publish.marked",
)
CRASH_SEED = 20261202


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def models_topic() -> str:
    return f"dispatch.models.t{uuid.uuid4().hex[:12]}"


def publisher(registry: SqlRegistry, bootstrap: str, topic: str, ack_s: float) -> OutboxPublisher:
    options = {"bootstrap_servers": [bootstrap], "request_timeout_ms": int(ack_s * 1000)}
    return OutboxPublisher(
        registry,
        lambda: make_producer(options, ack_s),
        topic,
        clock=_now,
        ack_timeout_s=ack_s,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )


def events_on(bootstrap: str, topic: str) -> list[tuple[str, ModelPromotedEvent]]:
    return [
        (record.key.decode(), ModelPromotedEvent.model_validate_json(record.value))
        for record in read_topic_all(bootstrap, topic, idle_ms=1_500)
    ]


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", "models", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(tmp_path: Path, store_url: str, bootstrap: str, topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env.update(
        DISPATCHLOOP_DATA_DIR=str(tmp_path / "data"),
        DISPATCHLOOP_STORE_URL=store_url,
        DISPATCHLOOP_REGISTRY__ROOT=str(tmp_path / "registry"),
        DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        DISPATCHLOOP_KAFKA__MODELS_TOPIC=topic,
        DISPATCHLOOP_REGISTRY__PUBLISH_TIMEOUT_S="10",
        DISPATCHLOOP_LOG_FORMAT="text",
    )
    return env


def test_cli_register_promote_publishes_one_valid_event(
    tmp_path: Path, sqlite_url: str, kafka_bootstrap: str, models_topic: str
) -> None:
    env = cli_env(tmp_path, sqlite_url, kafka_bootstrap, models_topic)
    model = make_model(tmp_path / "m", seed=1, onnx=True)
    registered = cli(env, "register", str(model), "--json")
    assert registered.returncode == 0, registered.stderr
    info = json.loads(registered.stdout)
    assert info["version"] == "v1" and len(info["sha256"]) == 64
    refused = cli(env, "promote", "v1")
    assert refused.returncode == 2 and "no decision record" in refused.stderr
    promoted = cli(env, "promote", "v1", "--force", "--reason", "first model", "--json")
    assert promoted.returncode == 0, promoted.stderr
    move = json.loads(promoted.stdout)
    assert move["published"] is True and move["override"] is True
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert listed["aliases"] == {"champion": "v1", "challenger": None}
    assert listed["versions"][0]["sha256"] == info["sha256"]
    assert listed["outbox_backlog"] == 0
    shown = json.loads(cli(env, "show", "champion", "--json").stdout)
    assert shown["verification"]["ok"] and shown["decisions"][0]["kind"] == "manual"
    history = json.loads(cli(env, "history", "--json").stdout)
    assert history[0]["actor"] and history[0]["reason"] == "first model"
    serving = json.loads(cli(env, "history", "--at", history[0]["at"], "--json").stdout)
    champion = serving["serving"]["champion"]
    assert champion["to_version"] == "v1" and champion["decision"]["reasons"] == ["first model"]
    assert serving["serving"]["challenger"] is None
    tampered = make_model(tmp_path / "t", seed=2)
    assert cli(env, "register", str(tampered)).returncode == 0
    weights = tmp_path / "registry" / "v2" / "model.safetensors"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    refused = cli(env, "promote", "v2", "--force", "--reason", "tampered")
    assert refused.returncode == 2 and "changed or corrupted" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    [(key, event)] = events_on(kafka_bootstrap, models_topic)
    assert key == "champion" and str(event.event_id) == move["event_id"]
    assert event.model_version == "v1" and event.sha256 == info["sha256"]
    assert event.onnx_sha256 == info["onnx_sha256"] and event.actor == history[0]["actor"]


def test_broker_down_during_promotion_publishes_when_it_returns(
    tmp_path: Path, store_url: str, models_topic: str
) -> None:
    broker = start_broker(log_dir=tmp_path)
    registry = open_registry(store_url, tmp_path / "registry")
    try:
        version = registry.register(make_model(tmp_path / "m", seed=2), actor=ACTOR).version
        registry.attach_decision(version, passing_record(version))
        sender = publisher(registry, broker.bootstrap, models_topic, ack_s=2.0)
        broker.pause()
        try:
            move = registry.promote(version, actor=ACTOR, reason="gates passed")
            assert registry.get("champion").version == version, "the alias moves regardless"
            down = sender.drain(timeout_s=3.0)
            assert down.backlog == 1 and down.error is not None
            assert registry.pending_outbox()[0].attempts >= 1
            failures = registry.metrics.publish_failures.labels("timeout")._value.get()
            failures += registry.metrics.publish_failures.labels("broker")._value.get()
            assert failures >= 1
        finally:
            broker.resume()
        up = sender.drain(timeout_s=20.0)
        sender.close()
        assert up.backlog == 0 and registry.outbox_backlog() == 0
        events = events_on(broker.bootstrap, models_topic)
        assert [str(e.event_id) for _, e in events] == [str(move.event.event_id)]
    finally:
        registry.close()
        broker.stop()


def crash_points(seed: int, n: int) -> list[str]:
    """Every named point at least once, the rest drawn with the seed; in seeded order."""
    names = list(REGISTER_POINTS + PROMOTE_POINTS)
    rng = random.Random(seed)
    points = names + rng.choices(names, k=n - len(names))
    rng.shuffle(points)
    return points


@pytest.fixture
def crash_registry(tmp_path: Path, sqlite_url: str) -> Iterator[SqlRegistry]:
    registry = open_registry(sqlite_url, tmp_path / "registry")
    try:
        yield registry
    finally:
        registry.close()


@pytest.mark.slow
def test_sigkill_at_20_seeded_points_never_loses_or_half_writes(
    tmp_path: Path,
    sqlite_url: str,
    kafka_bootstrap: str,
    models_topic: str,
    crash_registry: SqlRegistry,
) -> None:
    env = cli_env(tmp_path, sqlite_url, kafka_bootstrap, models_topic)
    registry = crash_registry
    sender = publisher(registry, kafka_bootstrap, models_topic, ack_s=10.0)
    killed: Counter[str] = Counter()
    try:
        for i, point in enumerate(crash_points(CRASH_SEED, 20)):
            model = make_model(tmp_path / f"m{i}", seed=100 + i)
            crash_env = {**env, "DISPATCHLOOP_TEST_CRASH_AT": point}
            if point in REGISTER_POINTS:  # only the crashed step runs as a real process
                result = cli(crash_env, "register", str(model))
                version = registry.register(model, actor=ACTOR).version  # restart: idempotent
            else:
                version = registry.register(model, actor=ACTOR).version
                result = cli(crash_env, "promote", version, "--force", "--reason", f"run {i}")
            assert result.returncode == -signal.SIGKILL, (point, result.stderr)
            killed[point] += 1
            champion = registry.alias("champion")
            if champion is None or champion.version != version:  # the restart retries
                registry.promote(version, actor=ACTOR, reason=f"retry {i}", force=True)
            assert sender.drain(timeout_s=20.0).backlog == 0  # the restarted publisher
            check_invariants(registry)
        sender.close()
        published = events_on(kafka_bootstrap, models_topic)
    finally:
        sender.close()
    outbox_ids = {row.event_id for row in registry.outbox()}
    seen = Counter(str(event.event_id) for _, event in published)
    assert set(seen) == outbox_ids, "every committed move published, nothing else"
    assert len(outbox_ids) == len(registry.history())
    duplicates = sum(count - 1 for count in seen.values())
    assert duplicates <= killed["publish.acked"] + killed["publish.sent"]
    assert sum(killed.values()) == 20
    if killed["register.renamed"] or killed["register.inserted"]:
        orphans = list((registry.root / ".orphans").iterdir())
        assert len(orphans) == killed["register.renamed"] + killed["register.inserted"]


def check_invariants(registry: SqlRegistry) -> None:
    """Champion complete and verified; alias, history and outbox agree move by move."""
    champion = registry.alias("champion")
    history = registry.history("champion")
    assert champion is not None and champion.version == history[-1].to_version
    registry.verify(champion.version)
    for version in registry.list_versions():
        registry.verify(version.version)
    outbox = {row.event_id: row for row in registry.outbox()}
    assert {entry.event_id for entry in history} == set(outbox)
    for entry in history:
        payload: dict[str, Any] = json.loads(outbox[entry.event_id].payload)
        assert payload["model_version"] == entry.to_version
        assert payload["previous_version"] == entry.from_version
    assert all(row.published_at is not None for row in outbox.values())
