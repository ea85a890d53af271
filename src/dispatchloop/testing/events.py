"""Realistic schema-v1 dispatch outcome events and malformed variants, seeded.

Events look like a day shift of a medical transport company: 9–14 candidate
drivers around Geneva, ~1.8 KB each with a few extra fields a real dispatch
system attaches (kept raw by the store, ignored by the models).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

CENTER_LAT, CENTER_LON = 46.2044, 6.1432
MALFORMED_KINDS = (
    "invalid_json",
    "unknown_schema_version",
    "action_not_a_candidate",
    "invalid_field",
    "too_large",
)


def _point(rng: np.random.Generator, spread: float = 0.06) -> dict[str, float]:
    return {
        "lat": round(CENTER_LAT + float(rng.normal(0, spread)), 6),
        "lon": round(CENTER_LON + float(rng.normal(0, spread * 1.4)), 6),
    }


def make_event(
    rng: np.random.Generator,
    episode_id: str,
    step: int,
    decided_at: datetime,
    company_id: str = "acme-medical",
) -> dict[str, Any]:
    """One valid event as a JSON-able dict."""
    n_candidates = int(rng.integers(9, 15))
    candidates = []
    for index in range(n_candidates):
        position = _point(rng)
        candidates.append(
            {
                "driver_id": f"d-{index}",
                **position,
                "available_in_min": round(float(rng.exponential(6.0)), 2),
                "queue_len": int(rng.integers(0, 4)),
                "eligible": bool(rng.random() > 0.1) or index == 0,
            }
        )
    chosen = candidates[int(rng.integers(0, n_candidates))]
    chosen["eligible"] = True
    window_start = decided_at + timedelta(minutes=float(rng.uniform(5, 30)))
    status = str(rng.choice(["completed", "late", "cancelled"], p=[0.85, 0.1, 0.05]))
    return {
        "schema_version": 1,
        "event_id": str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        "company_id": company_id,
        "episode_id": episode_id,
        "step": step,
        "decided_at": decided_at.isoformat().replace("+00:00", "Z"),
        "occurred_at": (window_start + timedelta(minutes=float(rng.uniform(0, 20))))
        .isoformat()
        .replace("+00:00", "Z"),
        "booking": {
            "booking_id": f"b-{episode_id}-{step}",
            "pickup": _point(rng),
            "dropoff": _point(rng),
            "window_start": window_start.isoformat().replace("+00:00", "Z"),
            "window_end": (window_start + timedelta(minutes=15)).isoformat().replace("+00:00", "Z"),
            "priority": int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1])),
            "patient_mobility": "seated",
        },
        "candidates": candidates,
        "action": {
            "driver_id": chosen["driver_id"],
            "policy": "heuristic",
            "model_version": None,
            "propensity": round(float(rng.uniform(0.5, 1.0)), 4),
        },
        "outcome": {
            "status": status,
            "pickup_delay_min": round(float(rng.gamma(2.0, 2.5)), 2),
            "empty_km": round(float(rng.gamma(2.0, 1.5)), 2),
            "total_km": round(float(rng.gamma(4.0, 2.0)), 2),
        },
        "reward": None,
        "dispatcher_node": "dispatch-eu-1",
    }


def event_stream(
    seed: int,
    n_events: int,
    steps_per_episode: int = 19,
    start: datetime = datetime(2026, 11, 23, 6, 0, tzinfo=UTC),
) -> Iterator[dict[str, Any]]:
    """n_events valid events: consecutive episodes, steps in order, minutes apart."""
    rng = np.random.default_rng(seed)
    for index in range(n_events):
        episode, step = divmod(index, steps_per_episode)
        decided_at = start + timedelta(minutes=3 * index)
        yield make_event(rng, f"acme-medical/ep-{seed}-{episode}", step, decided_at)


def malformed_record(rng: np.random.Generator, kind: str, valid: dict[str, Any]) -> bytes:
    """Bytes that must become a dead letter with the reason `kind`."""
    if kind == "invalid_json":
        return json.dumps(valid).encode()[: int(rng.integers(10, 200))]
    broken = json.loads(json.dumps(valid))
    broken["event_id"] = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    if kind == "unknown_schema_version":
        broken["schema_version"] = 2
    elif kind == "action_not_a_candidate":
        broken["action"]["driver_id"] = "d-nobody"
    elif kind == "invalid_field":
        broken["booking"]["priority"] = 7
    elif kind == "too_large":
        broken["padding"] = "x" * 70_000
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return json.dumps(broken).encode()


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()
