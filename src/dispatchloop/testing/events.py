"""Realistic schema-v1 dispatch outcome events and malformed variants, seeded.

Events look like a day shift of a medical transport company: 9–14 candidate
drivers around Geneva, ~1.8 KB each with a few extra fields a real dispatch
system attaches (kept raw by the store, ignored by the models).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
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


# --- a zoo of hostile records: what a careless or malicious producer can send ------------

OVERSIZED_BYTES = 1_200_000
"""Bigger than a Kafka producer's default max_request_size (1 MiB): too big for the DLQ
as it is, so its dead letter must go out truncated."""

HOSTILE_KINDS: dict[str, str] = {
    # kind: the dlq.reason it must get
    "truncated_json": "invalid_json",
    "not_an_object": "invalid_json",
    "nan_reward": "invalid_field",
    "not_utf8": "not_utf8",
    "tombstone": "no_value",
    "schema_v2": "unknown_schema_version",
    "action_elsewhere": "action_not_a_candidate",
    "priority_7": "invalid_field",
    "boolean_step": "invalid_field",
    "string_candidates": "invalid_field",
    "duplicate_key": "duplicate_key",
    "duplicate_driver": "duplicate_candidate",
    "occurred_first": "occurred_before_decided",
    "window_reversed": "invalid_window",
    "null_island": "implausible_coordinates",
    "deep_nesting": "too_deep",
    "nul_in_episode": "unstorable_text",
    "lone_surrogate": "unstorable_text",
    "too_large": "too_large",
    "oversized_for_dlq": "too_large",
}


def hostile_record(rng: np.random.Generator, kind: str, valid: dict[str, Any]) -> bytes | None:
    """Bytes (None: a tombstone) that must become a dead letter with HOSTILE_KINDS[kind]."""
    fixed: dict[str, Callable[[], bytes | None]] = {
        "truncated_json": lambda: encode(valid)[: int(rng.integers(10, 200))],
        "not_an_object": lambda: b"[1, 2, 3]",
        "not_utf8": lambda: b'{"schema_version": 1, "company_id": "\xff\xfe"}',
        "tombstone": lambda: None,
        "deep_nesting": lambda: b'{"schema_version": 1, "x": ' + b"[" * 3_000 + b"]" * 3_000 + b"}",
        "oversized_for_dlq": lambda: encode({**valid, "padding": "x" * OVERSIZED_BYTES}),
    }
    if kind in fixed:
        return fixed[kind]()
    broken = json.loads(json.dumps(valid))
    broken["event_id"] = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    raw = _break(broken, kind)
    return raw if raw is not None else encode(broken)


def _break(event: dict[str, Any], kind: str) -> bytes | None:
    """Mutate `event` in place for `kind`, or return the bytes when JSON cannot say it."""
    if kind == "nan_reward":
        return encode(event).replace(b'"reward":null', b'"reward":NaN')
    if kind == "duplicate_key":
        return encode(event)[:-1] + b',"step":' + str(event["step"] + 1).encode() + b"}"
    if kind == "lone_surrogate":
        return encode(event).replace(b'"company_id":"', b'"company_id":"\\ud800', 1)
    mutations: dict[str, Callable[[], object]] = {
        "schema_v2": lambda: event.update(schema_version=2),
        "action_elsewhere": lambda: event["action"].update(driver_id="d-nobody"),
        "priority_7": lambda: event["booking"].update(priority=7),
        "boolean_step": lambda: event.update(step=True),
        "string_candidates": lambda: event.update(candidates="d-0"),
        "duplicate_driver": lambda: event["candidates"].append(dict(event["candidates"][0])),
        "occurred_first": lambda: event.update(occurred_at="2000-01-01T00:00:00Z"),
        "window_reversed": lambda: event["booking"].update(window_end="2000-01-01T00:00:00Z"),
        "null_island": lambda: event["booking"].update(pickup={"lat": 0.0, "lon": 0.0}),
        "nul_in_episode": lambda: event.update(episode_id=event["episode_id"] + "\u0000"),
        "too_large": lambda: event.update(padding="x" * 70_000),
    }
    if kind not in mutations:
        raise ValueError(f"unknown hostile kind {kind!r}")
    mutations[kind]()
    return None


def json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (keys, and indexes of a list's first two items):
    where a mutation test may set or delete a value."""
    paths = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            paths += json_paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node[:2]):
            paths += json_paths(child, (*prefix, index))
    return paths


def set_path(node: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set the value at `path` (from `json_paths`) in place."""
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def delete_path(node: Any, path: tuple[Any, ...]) -> None:
    """Delete the value at `path` (from `json_paths`) in place."""
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
