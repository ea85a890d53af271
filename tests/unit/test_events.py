"""The wire contract: every rule enforced, each failure with its own reason code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from dispatchloop.events import (
    DispatchOutcomeEvent,
    Rejection,
    outcome_json_schema,
    parse_outcome,
)
from dispatchloop.screening import screen_outcome
from dispatchloop.testing.events import MALFORMED_KINDS, encode, event_stream, malformed_record

REPO = Path(__file__).resolve().parents[2]
LIMIT = 65_536


def _design_example() -> dict[str, Any]:
    """The example event of DESIGN.md, verbatim."""
    return {
        "schema_version": 1,
        "event_id": "0b6f1c2e-6d0a-4a53-9d84-2f0f6c3f5a10",
        "company_id": "acme-medical",
        "episode_id": "acme-medical/2026-11-23/day",
        "step": 12,
        "decided_at": "2026-11-23T07:58:40Z",
        "occurred_at": "2026-11-23T08:15:02Z",
        "booking": {
            "booking_id": "b-1023",
            "pickup": {"lat": 46.2044, "lon": 6.1432},
            "dropoff": {"lat": 46.1983, "lon": 6.1422},
            "window_start": "2026-11-23T08:05:00Z",
            "window_end": "2026-11-23T08:20:00Z",
            "priority": 2,
        },
        "candidates": [
            {
                "driver_id": "d-7",
                "lat": 46.21,
                "lon": 6.12,
                "available_in_min": 4.0,
                "queue_len": 1,
                "eligible": True,
            },
            {
                "driver_id": "d-9",
                "lat": 46.18,
                "lon": 6.15,
                "available_in_min": 0.0,
                "queue_len": 0,
                "eligible": True,
            },
        ],
        "action": {"driver_id": "d-9", "policy": "dqn", "model_version": "v6", "propensity": 0.95},
        "outcome": {
            "status": "completed",
            "pickup_delay_min": 3.5,
            "empty_km": 2.4,
            "total_km": 5.1,
        },
        "reward": None,
    }


def _reject(mutate: Callable[[dict[str, Any]], None]) -> Rejection:
    """The dead letter, checked to be the same on the ingest loop's screening path."""
    event = _design_example()
    mutate(event)
    raw = json.dumps(event).encode()
    result = parse_outcome(raw, LIMIT)
    assert isinstance(result, Rejection), "expected a dead letter"
    assert screen_outcome(raw, LIMIT) == result
    return result


def test_design_example_is_valid_and_extra_fields_are_ignored():
    event = _design_example()
    event["dispatcher_node"] = "eu-1"
    event["booking"]["notes"] = "wheelchair"
    parsed = parse_outcome(json.dumps(event).encode(), LIMIT)
    assert isinstance(parsed, DispatchOutcomeEvent)
    assert parsed.action_index == 1
    assert parsed.decided_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.update(schema_version=2), "unknown_schema_version"),
        (lambda e: e.pop("schema_version"), "unknown_schema_version"),
        (lambda e: e["action"].update(driver_id="d-404"), "action_not_a_candidate"),
        (lambda e: e["candidates"].append(dict(e["candidates"][0])), "duplicate_candidate"),
        (lambda e: e["booking"].update(priority=0), "invalid_field"),
        (lambda e: e["booking"].update(priority=4), "invalid_field"),
        (lambda e: e["outcome"].update(status="lost"), "invalid_field"),
        (lambda e: e.update(candidates=[]), "invalid_field"),
        (
            lambda e: e.update(
                candidates=[
                    {
                        "driver_id": f"d-{i}",
                        "lat": 46.2,
                        "lon": 6.1,
                        "available_in_min": 0,
                        "queue_len": 0,
                    }
                    for i in range(65)
                ]
            ),
            "invalid_field",
        ),
        (lambda e: e["booking"]["pickup"].update(lat=91.0), "invalid_field"),
        (lambda e: e["candidates"][0].update(lon=-181.0), "invalid_field"),
        (lambda e: e["booking"]["pickup"].update(lat=0.0, lon=0.0), "implausible_coordinates"),
        (lambda e: e.update(decided_at="2026-11-23T07:58:40"), "invalid_field"),
        (lambda e: e["booking"].update(window_end="2026-11-23T08:00:00Z"), "invalid_window"),
        (lambda e: e.update(occurred_at="2026-11-23T07:00:00Z"), "occurred_before_decided"),
        (lambda e: e["action"].update(propensity=0.0), "invalid_field"),
        (lambda e: e["action"].update(propensity=1.5), "invalid_field"),
        (lambda e: e.update(event_id="not-a-uuid"), "invalid_field"),
        (lambda e: e.update(step=-1), "invalid_field"),
        (lambda e: e["outcome"].update(empty_km=-3.0), "invalid_field"),
    ],
)
def test_each_rule_has_a_reason(mutate: Callable[[dict[str, Any]], None], reason: str):
    rejection = _reject(mutate)
    assert rejection.reason == reason
    assert rejection.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "not_utf8"),
        (b"[1, 2, 3]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (None, "no_value"),
        (b"x" * (LIMIT + 1), "too_large"),
    ],
)
def test_undecodable_records(raw: bytes | None, reason: str):
    result = parse_outcome(raw, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert screen_outcome(raw, LIMIT) == result


def test_nan_reward_is_rejected():
    raw = json.dumps(_design_example()).replace('"reward": null', '"reward": NaN').encode()
    result = parse_outcome(raw, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason in {"invalid_field", "invalid_json"}


def test_factories_make_valid_events_and_the_malformed_kinds_they_promise():
    events = list(event_stream(seed=3, n_events=200))
    assert all(isinstance(parse_outcome(encode(e), LIMIT), DispatchOutcomeEvent) for e in events)
    sizes = [len(encode(e)) for e in events]
    assert 1_500 < float(np.mean(sizes)) < 2_300
    rng = np.random.default_rng(0)
    for kind in MALFORMED_KINDS:
        result = parse_outcome(malformed_record(rng, kind, events[0]), LIMIT)
        assert isinstance(result, Rejection)
        assert result.reason == kind


def test_published_json_schema_is_current():
    published = json.loads((REPO / "docs/schema/dispatch-outcome-v1.json").read_text())
    assert published == outcome_json_schema(), "run `make schema` and commit the result"


def test_json_schema_accepts_the_example_and_rejects_field_violations():
    schema = outcome_json_schema()
    jsonschema.validate(_design_example(), schema)
    bad = _design_example()
    bad["booking"]["priority"] = 9
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
