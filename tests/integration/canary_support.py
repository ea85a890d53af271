"""Helpers of the canary tests: outcome events attributed to a model version, a canary
put in place the way the gate's promotion does."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from registry_support import make_model, passing_record

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.registry.base import ModelRegistry
from dispatchloop.replay import open_store
from dispatchloop.replay.base import IncomingEvent
from dispatchloop.testing.events import make_event

ACTOR = "ops@test"


def outcome_events(
    rng: np.random.Generator,
    version: str,
    n: int,
    start: datetime,
    *,
    late: float,
    cost_scale: float,
) -> list[dict[str, Any]]:
    """n decisions by `version` after `start`: late with probability `late`, delays and
    empty km scaled by `cost_scale` (the reward is decisions.reward's, from the outcome)."""
    docs = []
    for index in range(n):
        doc = make_event(rng, f"canary-{version}-{index // 19}", index % 19, start)
        doc["decided_at"] = (start + timedelta(milliseconds=1 + index % 900)).isoformat()
        doc["event_id"] = str(uuid.uuid4())
        doc["action"].update(policy="dqn", model_version=version, propensity=0.9)
        outcome = doc["outcome"]
        outcome["status"] = "late" if rng.random() < late else "completed"
        outcome["pickup_delay_min"] = round(outcome["pickup_delay_min"] * cost_scale, 2)
        outcome["empty_km"] = round(outcome["empty_km"] * cost_scale, 2)
        docs.append(doc)
    return docs


def write_events(url: str, docs: list[dict[str, Any]]) -> None:
    store = open_store(url)
    try:
        batch = []
        for doc in docs:
            raw = json.dumps(doc).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
    finally:
        store.close()


def start_canary(registry: ModelRegistry, models: Path, seed: int, champion: str) -> str:
    """Register a model as the gate would and put it on canary at 10 %; its version."""
    version = registry.register(make_model(models / f"m{seed}", seed), actor=ACTOR).version
    registry.attach_decision(version, passing_record(version, champion))
    registry.promote(version, actor=ACTOR, reason="gate passed", alias="challenger",
                     traffic_share=0.1)  # fmt: skip
    return version


def canary_started(registry: ModelRegistry) -> datetime:
    return registry.history("challenger")[-1].at
