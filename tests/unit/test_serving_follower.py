"""How promotion events become routings (no broker: the follower's `apply` directly)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatchloop.decisions.featurizer import FEATURIZER_VERSION
from dispatchloop.events import Lineage, ModelPromotedEvent
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import numpy_scorer
from dispatchloop.serving.dispatcher import Dispatcher, ServedModel
from dispatchloop.serving.follower import ModelFollower
from dispatchloop.serving.loader import ModelRefusedError
from dispatchloop.serving.metrics import ServingMetrics
from dispatchloop.sim.scenario import Scenario

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
SCORER = numpy_scorer(CandidateQNetwork(8, 1))


def _event(version: str, *, at: int, **fields: Any) -> ModelPromotedEvent:
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": "model.promoted",
        "scope": "*",
        "alias": "champion",
        "model_version": version,
        "previous_version": None,
        "artifact_uri": f"file:///r/{version}/model.safetensors",
        "onnx_uri": None,
        "card_uri": f"file:///r/{version}/card.json",
        "sha256": version.encode().hex().ljust(64, "0"),
        "onnx_sha256": None,
        "featurizer_version": FEATURIZER_VERSION,
        "traffic_share": 1.0,
        "decision": None,
        "lineage": Lineage(trainer="dqn"),
        "actor": "test",
        "reason": "test",
        "promoted_at": T0 + timedelta(seconds=at),
    }
    return ModelPromotedEvent(**{**values, **fields})


class Loader:
    """Loads anything except the versions listed as refused; counts loads."""

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.refused = refused
        self.loads: list[str] = []

    def __call__(self, event: ModelPromotedEvent) -> ServedModel:
        if event.model_version in self.refused:
            raise ModelRefusedError("integrity", f"{event.model_version} was tampered with")
        self.loads.append(event.model_version)
        demand = Scenario.default().arrays.demand
        return ServedModel(event.model_version, "dqn", SCORER, demand)


def _follower(loader: Loader) -> ModelFollower:
    return ModelFollower(
        Dispatcher(),
        topic="t",
        consumer_factory=lambda: None,
        metrics=ServingMetrics(),
        loader=loader,
    )


def _served(follower: ModelFollower, scope: str = "*") -> tuple[str | None, str | None, float]:
    routing = follower.dispatcher.routings()[scope]
    champion = routing.champion.version if routing.champion else None
    challenger = routing.challenger.version if routing.challenger else None
    return champion, challenger, routing.challenger_share


def test_promotion_canary_share_and_rollback_move_the_routing() -> None:
    loader = Loader()
    follower = _follower(loader)
    assert follower.apply(_event("v1", at=0))
    assert follower.apply(_event("v2", at=1, alias="challenger", traffic_share=0.1))
    assert _served(follower) == ("v1", "v2", 0.1)
    share = _event(
        "v2", at=2, alias="challenger", traffic_share=0.3, event_type="model.traffic_changed"
    )
    assert follower.apply(share)
    assert _served(follower) == ("v1", "v2", 0.3)
    assert follower.apply(_event("v2", at=3))  # the challenger becomes champion: not reloaded
    assert follower.apply(_event("v1", at=4, event_type="model.rolled_back"))
    assert _served(follower) == ("v1", "v2", 0.3)
    assert loader.loads == ["v1", "v2", "v1"]  # v1 served nowhere after v2's promotion: re-verified


def test_duplicates_older_events_and_refusals_leave_the_routing_alone() -> None:
    loader = Loader(refused=("v3",))
    follower = _follower(loader)
    event = _event("v2", at=10)
    assert follower.apply(event)
    assert not follower.apply(event)  # same event_id: at-least-once delivery
    assert not follower.apply(_event("v1", at=5))  # older than the move that serves
    assert not follower.apply(_event("v3", at=11))
    assert _served(follower) == ("v2", None, 0.0)
    assert follower.metrics.load_failures.labels("integrity")._value.get() == 1
    assert follower.metrics.model_loads.labels("*", "champion")._value.get() == 1


def test_scopes_are_routed_separately() -> None:
    follower = _follower(Loader())
    follower.apply(_event("v1", at=0))
    follower.apply(_event("v9", at=1, scope="acme"))
    assert _served(follower) == ("v1", None, 0.0)
    assert _served(follower, "acme") == ("v9", None, 0.0)
    slots = follower.slots()
    assert {key: slot.model.version for key, slot in slots.items()} == {
        ("*", "champion"): "v1",
        ("acme", "champion"): "v9",
    }


@pytest.mark.parametrize("uri", ["https://x/card.json", "s3://bucket/v1/card.json"])
def test_only_local_file_uris_are_loaded(uri: str) -> None:
    from dispatchloop.serving.loader import load_from_event

    with pytest.raises(ModelRefusedError, match="not a local file://") as refused:
        load_from_event(_event("v1", at=0, card_uri=uri))
    assert refused.value.reason == "mismatch"


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        # the daemon's canary rollback: the challenger alias onto the champion's version, share 0
        (
            {"model_version": "v1", "traffic_share": 0.0, "event_type": "model.rolled_back"},
            ("v1", None, 0.0),
        ),
        # its promotion's second move: the challenger keeps its version at share 0
        (
            {"model_version": "v2", "traffic_share": 0.0, "event_type": "model.traffic_changed"},
            ("v2", None, 0.0),
        ),
    ],
)
def test_an_ended_canary_leaves_the_champion_every_decision(
    ending: dict[str, Any], expected: tuple[str | None, str | None, float]
) -> None:
    ending = dict(ending)
    follower = _follower(Loader())
    assert follower.apply(_event("v1", at=0))
    assert follower.apply(_event("v2", at=1, alias="challenger", traffic_share=0.1))
    if ending["model_version"] == "v2":  # promoted: champion := v2 first, share still 0.1
        assert follower.apply(_event("v2", at=2))
        assert _served(follower) == ("v2", None, 0.0)  # same version in both arms: one arm
    version = ending.pop("model_version")
    assert follower.apply(_event(version, at=3, alias="challenger", **ending))
    assert _served(follower) == expected
