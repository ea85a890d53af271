"""Pure logic of the registry: the promotion event contract, rollback as a stack, the
crash hook, the outbox publisher's ack/failure handling (fake producer), metrics,
and that the registry's read side never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import generate_latest

from dispatchloop.events import ModelPromotedEvent, promotion_json_schema
from dispatchloop.registry import OutboxPublisher, RegistryMetrics
from dispatchloop.registry.base import AliasState, HistoryEntry, ModelRegistry, OutboxRow
from dispatchloop.registry.sql import _rollback_target

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def design_example() -> dict[str, Any]:
    """The DESIGN.md example with its placeholders filled in."""
    return {
        "schema_version": 1, "event_id": str(uuid.uuid4()), "event_type": "model.promoted",
        "scope": "*", "alias": "champion", "model_version": "v7", "previous_version": "v6",
        "artifact_uri": "file:///var/lib/dispatchloop/registry/v7/model.safetensors",
        "onnx_uri": "file:///var/lib/dispatchloop/registry/v7/model.onnx",
        "card_uri": "file:///var/lib/dispatchloop/registry/v7/card.json",
        "sha256": "a" * 64, "onnx_sha256": "b" * 64, "featurizer_version": 2,
        "traffic_share": 1.0, "metrics": {"sim_reward_delta": 4.1},
        "decision": {"verdict": "promote",
                     "record_uri": "file:///var/lib/dispatchloop/registry/v7/decisions/x.json"},
        "lineage": {"data_window": ["2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z"],
                    "events": 120345, "parent_version": "v6", "study": "nightly-2026-12-01",
                    "trainer": "distill"},
        "actor": "daemon", "reason": "all gates passed", "promoted_at": "2026-11-23T09:00:00Z",
    }  # fmt: skip


def test_published_promotion_schema_is_current() -> None:
    published = json.loads((REPO / "docs/schema/model-promoted-v1.json").read_text())
    assert published == promotion_json_schema(), "run `make schema` and commit the result"


def test_design_example_is_valid_and_its_key_follows_the_scope() -> None:
    example = design_example()
    jsonschema.validate(example, promotion_json_schema())
    event = ModelPromotedEvent.model_validate(example)
    assert event.key == "champion"
    scoped = event.model_copy(update={"scope": "acme-medical", "alias": "challenger"})
    assert scoped.key == "acme-medical/challenger"
    bad = {**example, "sha256": "not-a-hash"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, promotion_json_schema())


def entry(i: int, to: str, kind: str = "model.promoted") -> HistoryEntry:
    return HistoryEntry(
        id=i, scope="*", alias="champion", event_type=kind, from_version=None,  # type: ignore[arg-type]
        to_version=to, traffic_share=1.0, actor="a", reason="r", decision_record_id=None,
        override=False, event_id=str(i), at=NOW,
    )  # fmt: skip


def state(version: str) -> AliasState:
    return AliasState(
        scope="*", alias="champion", version=version, traffic_share=1.0, generation=1,
        updated_at=NOW,
    )  # fmt: skip


def test_rollback_reads_history_as_a_stack() -> None:
    promoted = [entry(1, "v1"), entry(2, "v2"), entry(3, "v3")]
    assert _rollback_target(promoted, state("v3")) == "v2"
    once = [*promoted, entry(4, "v2", "model.rolled_back")]
    assert _rollback_target(once, state("v2")) == "v1"
    twice = [*once, entry(5, "v1", "model.rolled_back")]
    assert _rollback_target(twice, state("v1")) is None
    share = [entry(1, "v1"), entry(2, "v2"), entry(3, "v2", "model.traffic_changed")]
    assert _rollback_target(share, state("v2")) == "v1"
    again = [entry(1, "v1"), entry(2, "v2"), entry(3, "v1"), entry(4, "v2")]
    assert _rollback_target(again, state("v2")) == "v1"


def test_crash_hook_kills_only_at_the_nth_pass_of_its_point() -> None:
    script = (
        "from dispatchloop.registry.base import crash_checkpoint\n"
        "hook = crash_checkpoint('move.locked:2')\n"
        "hook('other'); hook('move.locked'); print('alive', flush=True)\n"
        "hook('move.locked'); print('still alive', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -9 and result.stdout.split() == ["alive"]


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error


class FakeProducer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.sent: list[tuple[str, bytes, bytes, dict[str, bytes]]] = []
        self.closed = False

    def send(
        self, topic: str, *, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
    ) -> FakeFuture:
        self.sent.append((topic, key, value, dict(headers)))
        return FakeFuture(self.error)

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class FakeOutbox:
    """Just the outbox part of a registry."""

    def __init__(self, payloads: list[str]) -> None:
        self.metrics = RegistryMetrics()
        self.rows = [
            OutboxRow(id=i, event_id=json.loads(p)["event_id"], key="champion", payload=p,
                      attempts=0, published_at=None)
            for i, p in enumerate(payloads)
        ]  # fmt: skip
        self.published: list[int] = []

    def pending_outbox(self, limit: int = 100) -> list[OutboxRow]:
        return [r for r in self.rows if r.id not in self.published][:limit]

    def outbox_backlog(self) -> int:
        return len(self.pending_outbox())

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        self.published.extend(ids)

    def record_publish_failure(self, ids: Sequence[int], error: str) -> None:
        self.rows = [
            r.model_copy(update={"attempts": r.attempts + 1}) if r.id in ids else r
            for r in self.rows
        ]


def make_publisher(outbox: FakeOutbox, producers: list[FakeProducer]) -> OutboxPublisher:
    factory_calls = iter(producers)
    registry: ModelRegistry = outbox  # type: ignore[assignment]
    return OutboxPublisher(
        registry, lambda: next(factory_calls), "dispatch.models", clock=lambda: NOW,
        backoff_initial_s=0.01, backoff_max_s=0.02,
    )  # fmt: skip


def test_rows_are_marked_published_only_after_the_acknowledgement() -> None:
    outbox = FakeOutbox([json.dumps(design_example()), json.dumps(design_example())])
    failing, working = FakeProducer(KafkaTimeoutError("no ack")), FakeProducer()
    sender = make_publisher(outbox, [failing, working])
    first = sender.drain_once()
    assert (first.published, first.backlog) == (0, 2) and first.error is not None
    assert outbox.published == [] and [r.attempts for r in outbox.rows] == [1, 1]
    assert failing.closed, "a failed producer is re-created"
    assert outbox.metrics.publish_failures.labels("timeout")._value.get() == 1
    second = sender.drain_once()
    assert (second.published, second.backlog) == (2, 0) and outbox.published == [0, 1]
    topic, key, value, headers = working.sent[0]
    assert (topic, key) == ("dispatch.models", b"champion")
    assert headers["event_id"].decode() == json.loads(value)["event_id"]


def test_drain_backs_off_until_its_deadline_while_the_broker_is_down() -> None:
    outbox = FakeOutbox([json.dumps(design_example())])
    down = [FakeProducer(KafkaConnectionError()) for _ in range(200)]
    result = make_publisher(outbox, down).drain(timeout_s=0.2)
    assert result.backlog == 1 and result.published == 0
    assert outbox.rows[0].attempts >= 3
    assert outbox.metrics.publish_failures.labels("broker")._value.get() >= 3


def test_metrics_exposition_passes_promtool() -> None:
    metrics = RegistryMetrics()
    metrics.promotions.labels("champion", "daemon").inc()
    metrics.moved("*", "champion", "v2", "v1")
    metrics.outbox_backlog.set(3)
    exposition = generate_latest(metrics.collector_registry)
    text = exposition.decode()
    assert 'dispatchloop_registry_champion_info{scope="*",version="v2"} 1.0' in text
    assert 'dispatchloop_registry_champion_info{scope="*",version="v1"} 0.0' in text
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is missing: make setup installs it"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_registry_read_side_does_not_import_torch() -> None:
    script = (
        "import sys\nimport dispatchloop.registry, dispatchloop.cli.models\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "False", result.stderr
