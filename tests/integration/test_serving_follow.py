"""The dispatcher follows dispatch.models on a real broker: promotions, canary share,
rollback, duplicates, and refusal of tampered or foreign versions (the old model serves)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from serving_support import (
    PublishingRegistry,
    decide_requests,
    make_served_model,
    wait_for,
)

from dispatchloop.events import ModelPromotedEvent
from dispatchloop.serving.dispatcher import Dispatcher
from dispatchloop.serving.follower import ModelFollower, make_models_consumer
from dispatchloop.serving.loader import ModelRefusedError, load_from_event, load_from_registry
from dispatchloop.serving.metrics import ServingMetrics

pytestmark = pytest.mark.integration


@pytest.fixture
def models_topic() -> str:
    return f"dispatch.models.t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def published(
    tmp_path: Path, kafka_bootstrap: str, models_topic: str
) -> Iterator[PublishingRegistry]:
    registry = PublishingRegistry(tmp_path, kafka_bootstrap, models_topic)
    try:
        yield registry
    finally:
        registry.close()


def _follower(published: PublishingRegistry) -> ModelFollower:
    return ModelFollower(
        Dispatcher(epsilon=0.0, seed=1),
        topic=published.kafka.models_topic,
        consumer_factory=lambda: make_models_consumer(published.kafka),
        metrics=ServingMetrics(),
    )


def _served(follower: ModelFollower, scope: str = "*") -> tuple[str | None, str | None, float]:
    routing = follower.dispatcher.routings().get(scope)
    if routing is None:
        return (None, None, 0.0)
    champion = None if routing.champion is None else routing.champion.version
    challenger = None if routing.challenger is None else routing.challenger.version
    return (champion, challenger, routing.challenger_share)


def _tamper(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_dispatcher_follows_promotions_and_keeps_its_model_when_one_is_tampered(
    tmp_path: Path, published: PublishingRegistry
) -> None:
    v1, v2, v3 = (
        published.register(make_served_model(tmp_path / f"m{seed}", seed)) for seed in (1, 2, 3)
    )
    published.promote(v1)
    follower = _follower(published).start()
    try:
        wait_for(follower.caught_up.is_set, what="catching up")
        assert wait_for(lambda: _served(follower) == (v1, None, 0.0), what="v1 champion")

        published.promote(v2, alias="challenger", share=0.25)
        wait_for(lambda: _served(follower) == (v1, v2, 0.25), what="v2 canary at 25 %")
        request = decide_requests(3)[-1]
        versions = {follower.dispatcher.decide(request).model_version for _ in range(200)}
        assert versions == {v1, v2}

        published.promote(v3)  # verified at promotion, tampered before any dispatcher loads it
        _tamper(published.registry.get(v3).weights_path)
        published.promote(v2, alias="challenger", share=0.5)  # a later event still applies
        wait_for(lambda: _served(follower) == (v1, v2, 0.5), what="v2 at 50 %")
        metrics = follower.metrics
        assert metrics.load_failures.labels("integrity")._value.get() == 1
        assert _served(follower) == (v1, v2, 0.5)  # v3 never served
    finally:
        follower.stop()

    # A dispatcher started now reads the topic from the beginning: latest event per key,
    # the tampered champion refused again, so the champion slot stays empty (greedy).
    late = _follower(published).start()
    try:
        wait_for(late.caught_up.is_set, what="late catching up")
        wait_for(lambda: _served(late)[1] == v2, what="late follower sees the challenger")
        assert _served(late) == (None, v2, 0.5)
        assert late.metrics.load_failures.labels("integrity")._value.get() == 1
        decision = late.dispatcher.decide(decide_requests(3)[-1])
        assert decision.model_version in (v2, None)
    finally:
        late.stop()


def test_duplicates_foreign_featurizers_and_rollbacks(
    tmp_path: Path, published: PublishingRegistry, kafka_bootstrap: str
) -> None:
    v1, v2 = (published.register(make_served_model(tmp_path / f"m{s}", s)) for s in (1, 2))
    published.promote(v1)
    published.promote(v2)
    follower = _follower(published).start()
    try:
        wait_for(lambda: _served(follower)[0] == v2, what="v2 champion")
        loads = follower.metrics.model_loads.labels("*", "champion")._value.get()
        producer = KafkaProducer(bootstrap_servers=[kafka_bootstrap], acks="all")
        try:
            last = published.registry.outbox()[-1]
            producer.send(
                published.kafka.models_topic, key=last.key.encode(), value=last.payload.encode()
            )
            event = ModelPromotedEvent.model_validate_json(last.payload)
            foreign = event.model_copy(
                update={"event_id": uuid.uuid4(), "featurizer_version": 99, "model_version": v1}
            )
            producer.send(
                published.kafka.models_topic,
                key=b"champion",
                value=foreign.model_dump_json().encode(),
            )
            producer.send(published.kafka.models_topic, key=b"champion", value=b"{not json")
            producer.flush(timeout=10)
        finally:
            producer.close()
        metrics = follower.metrics
        wait_for(
            lambda: metrics.load_failures.labels("featurizer")._value.get() == 1, what="refusal"
        )
        wait_for(lambda: metrics.follower_errors.labels("invalid_event")._value.get() == 1)
        assert (
            metrics.model_loads.labels("*", "champion")._value.get() == loads
        )  # duplicate ignored
        assert _served(follower)[0] == v2

        published.registry.rollback("champion", actor="test", reason="bad canary")
        assert published.publisher.drain(timeout_s=20.0).backlog == 0
        wait_for(lambda: _served(follower)[0] == v1, what="rollback to v1")
    finally:
        follower.stop()


def test_loading_from_an_event_checks_every_hash_and_the_card(
    tmp_path: Path, published: PublishingRegistry
) -> None:
    v1 = published.register(make_served_model(tmp_path / "m1", 1))
    published.promote(v1)
    event = ModelPromotedEvent.model_validate_json(published.registry.outbox()[-1].payload)
    model = load_from_event(event)
    assert model.version == v1
    assert load_from_registry(published.registry, "champion").version == v1
    wrong_onnx = event.model_copy(update={"onnx_sha256": "0" * 64})
    with pytest.raises(ModelRefusedError, match="onnx_sha256") as refused:
        load_from_event(wrong_onnx)
    assert refused.value.reason == "mismatch"
    elsewhere = event.model_copy(update={"card_uri": (tmp_path / "nowhere" / "card.json").as_uri()})
    with pytest.raises(ModelRefusedError) as refused:
        load_from_event(elsewhere)
    assert refused.value.reason == "card"
    _tamper(published.registry.get(v1).onnx_path)  # type: ignore[arg-type]
    with pytest.raises(ModelRefusedError, match=r"model\.onnx") as refused:
        load_from_event(event)
    assert refused.value.reason == "integrity"
    with pytest.raises(ModelRefusedError):
        load_from_registry(published.registry, v1)
    assert os.access(published.registry.get(v1).weights_path, os.R_OK)
