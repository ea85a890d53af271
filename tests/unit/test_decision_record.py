"""The decision record model accepts DESIGN.md's example and refuses what it does not know."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dispatchloop.events import DecisionRecord

DESIGN_EXAMPLE = {
    "record_id": "0b6f1c2e",
    "candidate": "v8",
    "champion": "v7",
    "verdict": "promote",
    "gates": [
        {
            "name": "paired_sim",
            "passed": True,
            "value": 3.2,
            "ci": [1.1, 5.3],
            "confidence": 0.99,
            "threshold": 0.0,
            "detail": "400 paired episodes, stopped at look 2 of 5",
        },
        {"name": "guardrail.late_rate", "passed": True, "value": 0.001, "threshold": 0.005},
        {"name": "ope.snips", "passed": None, "value": None, "detail": "ESS 37 < 200"},
    ],
    "reasons": ["all gates passed"],
    "scenario": {"fingerprint": "abc", "window": ["2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z"]},
    "seeds": "TEST",
    "created_at": "2026-12-01T09:00:00Z",
}


def test_design_example_round_trips() -> None:
    record = DecisionRecord.model_validate_json(json.dumps(DESIGN_EXAMPLE))
    assert record.gates[2].passed is None
    again = DecisionRecord.model_validate_json(record.model_dump_json())
    assert again == record


@pytest.mark.parametrize(
    "change",
    [
        {"surprise": 1},
        {"verdict": "maybe"},
        {"gates": [{"name": "x", "passed": True, "value": float("nan")}]},
        {"created_at": "2026-12-01T09:00:00"},
    ],
)
def test_unknown_keys_bad_verdicts_nan_and_naive_times_are_refused(
    change: dict[str, object],
) -> None:
    with pytest.raises(ValidationError):
        DecisionRecord.model_validate({**DESIGN_EXAMPLE, **change})
