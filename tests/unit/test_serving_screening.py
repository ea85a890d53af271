"""Serving's fast path for `POST /v1/decide` decides exactly as the models' path does.

`screening.screen_decide_request` must accept only what `DecideRequest` accepts, and
give the featurizer the same situation (same floats, same arrays, same datetime
arithmetic), so every decision is identical; whatever it refuses is the models' call.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dispatchloop import screening
from dispatchloop.decisions import featurizer
from dispatchloop.decisions.featurizer import (
    Situation,
    featurize,
    situation_from_decision,
    situation_from_request,
)
from dispatchloop.events import DecideRequest
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import numpy_scorer
from dispatchloop.screening import ScreenedDecideRequest, screen_decide_request
from dispatchloop.serving.dispatcher import Dispatcher, Routing, ServedModel
from dispatchloop.serving.http import validated
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, LoggingPolicy
from dispatchloop.sim.producer import simulated_events
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.events import delete_path, json_paths, set_path

REQUEST_FIELDS = ("decided_at", "booking", "candidates", "company_id")


def _bodies(n: int, n_drivers: int, seed: int) -> list[dict[str, Any]]:
    """Request documents of simulated decisions (what a dispatch system sends)."""
    scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
    policy = LoggingPolicy(GreedyPolicy(), "greedy")
    events = simulated_events(scenario, RewardSettings(), policy, n, seed=seed)
    return [{name: event[name] for name in REQUEST_FIELDS} for event in events]


def _assert_same_situation(fast: Situation, model: Situation) -> None:
    for name, a, b in zip(Situation._fields, fast, model, strict=True):
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray) and a.dtype == b.dtype, name
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
        else:
            assert type(a) is type(b) and repr(a) == repr(b), (name, a, b)


def _errors(exc: ValidationError) -> list[Any]:
    """What the 422 answer is made of (inputs left out: NaN is not equal to itself)."""
    return exc.errors(include_url=False, include_input=False)


def _model_situation(model: DecideRequest) -> Situation:
    return situation_from_decision(model.decided_at, model.booking, model.candidates)


def test_strict_structs_are_the_mirrors_refusing_unknown_keys():
    for strict, mirror in screening.STRICT_MIRRORS.items():
        strict_info = msgspec.inspect.type_info(strict)
        mirror_info = msgspec.inspect.type_info(mirror)
        assert isinstance(strict_info, msgspec.inspect.StructType)
        assert isinstance(mirror_info, msgspec.inspect.StructType)
        assert strict_info.forbid_unknown_fields and issubclass(strict, mirror)
        for a, b in zip(strict_info.fields, mirror_info.fields, strict=True):
            assert (a.name, a.required, a.default) == (b.name, b.required, b.default)
            if not isinstance(a.type, msgspec.inspect.StructType | msgspec.inspect.ListType):
                assert a.type == b.type, a.name
    assert screening.MIRRORED_MODELS["DecideRequest"] is screening._DecideRequest


@pytest.mark.parametrize(("n_drivers", "seed"), [(40, 3), (9, 4)])
def test_simulated_requests_take_the_fast_path_and_decide_identically(n_drivers: int, seed: int):
    scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
    torch.manual_seed(seed)
    served = ServedModel(
        "v1", "dqn", numpy_scorer(CandidateQNetwork(32, 2)), scenario.arrays.demand
    )
    dispatchers = []
    for _ in range(2):  # same seed: same exploration draws on both paths
        dispatcher = Dispatcher(epsilon=0.1, seed=seed)
        dispatcher.swap("*", Routing(champion=served, challenger=None))
        dispatcher.swap("acme", Routing())  # the greedy fallback, for a company
        dispatchers.append(dispatcher)
    for index, document in enumerate(_bodies(150, n_drivers, seed)):
        if index % 2:
            document["company_id"] = "acme"
        body = json.dumps(document, separators=(",", ":")).encode()
        fast = screen_decide_request(body)
        model = DecideRequest.model_validate_json(body)
        assert isinstance(fast, ScreenedDecideRequest), document
        assert isinstance(validated(body), ScreenedDecideRequest)
        _assert_same_situation(situation_from_request(fast), _model_situation(model))
        assert dispatchers[0].decide(fast) == dispatchers[1].decide(model)


def test_pydantic_dumped_requests_take_the_fast_path():
    """What `model_dump_json` writes (the benchmarks' and tests' bodies) is screened fast."""
    for document in _bodies(20, 40, 5):
        body = DecideRequest.model_validate(document).model_dump_json().encode()
        assert isinstance(screen_decide_request(body), ScreenedDecideRequest)


_BASE = _bodies(3, 5, 6)
_RULES = {  # every refusal the models make beyond a field's type and bounds
    "null island pickup": lambda d: d["booking"]["pickup"].update(lat=0.0, lon=-0.0),
    "null island dropoff": lambda d: d["booking"]["dropoff"].update(lat=0, lon=0),
    "window reversed": lambda d: d["booking"].update(
        window_start="2026-01-01T08:00:00+01:00", window_end="2026-01-01T06:59:59.999999Z"
    ),
    "duplicate driver": lambda d: d["candidates"][1].update(
        driver_id=d["candidates"][0]["driver_id"]
    ),
    "nobody eligible": lambda d: [c.update(eligible=False) for c in d["candidates"]],
    "no candidate": lambda d: d.update(candidates=[]),
    "65 candidates": lambda d: d.update(
        candidates=[{**d["candidates"][0], "driver_id": f"x{i}"} for i in range(65)]
    ),
    "empty company": lambda d: d.update(company_id=""),
    "long company": lambda d: d.update(company_id="c" * 257),
    "naive decided_at": lambda d: d.update(decided_at="2026-01-01T07:00:00"),
    "boolean priority": lambda d: d["booking"].update(priority=True),
    "boolean queue_len": lambda d: d["candidates"][0].update(queue_len=False),
    "NaN latitude": lambda d: d["candidates"][0].update(lat=float("nan")),
}


@pytest.mark.parametrize("rule", sorted(_RULES))
def test_every_rule_of_the_models_is_refused_and_left_to_them(rule: str):
    document = json.loads(json.dumps(_BASE[0]))
    _RULES[rule](document)
    body = json.dumps(document).encode()
    assert screen_decide_request(body) is None
    with pytest.raises(ValidationError) as refused:
        DecideRequest.model_validate_json(body)
    answer = validated(body)
    assert isinstance(answer, ValidationError)
    assert _errors(answer) == _errors(refused.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(note="an extra key"),
        lambda d: d["candidates"][0].update(vehicle={"seats": 4}),
        lambda d: d["booking"].update(priority="2"),  # lax coercion
        lambda d: d["candidates"][0].update(queue_len=2.0),
        lambda d: d.update(decided_at="2026-01-01 07:00:00Z"),
        lambda d: d["candidates"][0].update(driver_id="Genève"),
    ],
)
def test_valid_but_unusual_requests_are_the_models_and_still_decided(change: Any):
    document = json.loads(json.dumps(_BASE[1]))
    change(document)
    body = json.dumps(document).encode()  # ensure_ascii: "Genève" is an escape
    assert screen_decide_request(body) is None
    assert isinstance(validated(body), DecideRequest)


# --- property: fast acceptance implies the models' acceptance, with the same situation ----

_TIMESTAMPS = [
    "2026-11-23T06:00:00Z",
    "2026-11-23T06:00:00+01:00",
    "2026-11-23T06:00:00.999999999Z",
    "2026-11-23T06:00:00.5-00:00",
    "2026-11-23T06:00:00.123456+05:45",
    "2026-11-23T06:00:00.1234567Z",
    "2026-11-23 06:00:00Z",
    "2026-11-23t06:00:00z",
    "2026-11-23T06:00Z",
    "2026-11-23T06:00:00",
    "2026-02-30T06:00:00Z",
    "2026-11-23T24:00:00Z",
    "2026-11-23T23:59:60Z",
    "2026-11-23T06:00:00+23:59",
    "2026-11-23T06:00:00-23:59",
    "2026-11-23T06:00:00+24:00",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999-12:00",
    "2026-11-23T06:00:00.000001Z",
    "2026-11-23T05:59:59.9999999Z",
    "1700000000",
]
_TIMESTAMP_PATHS = [("decided_at",), ("booking", "window_start"), ("booking", "window_end")]
_NUMBERS = [0, 0.0, -0.0, 1, 1.0, 2, 3, 4, -1, 1e-300, 5e-324, 1.0000001, 90, 90.000001, -90]
_NUMBERS += [-180, 180.5, 1440, 1440.01, 1000, 1001, 2**63, 0.1 + 0.2, 46.2144716419489]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_NUMBERS),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from([*_TIMESTAMPS, "", "x" * 256, "x" * 257, "d-0", "d-1", "acme"]),
    st.text(max_size=4),
    st.just([]),
    st.just({}),
)


Mutation = tuple[int, list[tuple[Any, str]], list[tuple[str, int, Any]], str]
_MUTATION = st.tuples(
    st.sampled_from(range(len(_BASE))),
    st.lists(
        st.tuples(st.sampled_from(_TIMESTAMP_PATHS), st.sampled_from(_TIMESTAMPS)), max_size=3
    ),
    st.lists(
        st.tuples(st.sampled_from(["set", "delete", "copy"]), st.integers(0, 10_000), _VALUES),
        max_size=3,
    ),
    st.sampled_from(["", "bom", "junk", "duplicate_key", "whitespace", "pretty"]),
)


def _mutated(mutation: Mutation) -> bytes:
    base, timestamp_changes, changes, framing = mutation
    document = json.loads(json.dumps(_BASE[base]))
    for path, moment in timestamp_changes:
        set_path(document, path, moment)
    for operation, pick, value in changes:
        paths = json_paths(document)
        if not paths:
            break
        path = paths[pick % len(paths)]
        if operation == "set":
            set_path(document, path, json.loads(json.dumps(value)))
        elif operation == "copy":  # another field's value: same-typed, often a duplicate id
            source = paths[(pick * 7 + 3) % len(paths)]
            node: Any = document
            for key in source:
                node = node[key]
            set_path(document, path, json.loads(json.dumps(node)))
        else:
            delete_path(document, path)
    raw = json.dumps(document, indent=2 if framing == "pretty" else None).encode()
    if framing == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif framing == "junk":
        raw += b"x"
    elif framing == "duplicate_key" and raw.startswith(b"{"):
        raw = b'{"decided_at": "2026-01-01T05:00:00Z", "company_id": "first", ' + raw[1:]
    elif framing == "whitespace":
        raw = b" \n" + raw + b"\t "
    return raw


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MUTATION)
def test_fast_acceptance_implies_the_models_acceptance_with_the_same_situation(
    mutation: Mutation,
):
    raw = _mutated(mutation)
    fast = screen_decide_request(raw)
    try:
        model = DecideRequest.model_validate_json(raw)
    except ValidationError as exc:
        assert fast is None, f"fast path accepted what the models refuse: {exc}"
        answer = validated(raw)
        assert isinstance(answer, ValidationError)
        assert _errors(answer) == _errors(exc)
        return
    if fast is None:
        assert isinstance(validated(raw), DecideRequest)
        return
    assert fast.company_id == model.company_id
    assert [c.driver_id for c in fast.candidates] == [c.driver_id for c in model.candidates]
    for moment, expected in (
        (fast.decided_at, model.decided_at),
        (fast.window_start, model.booking.window_start),
        (fast.window_end, model.booking.window_end),
    ):
        assert (moment, moment.utcoffset(), moment.microsecond) == (
            expected,
            expected.utcoffset(),
            expected.microsecond,
        )
    _assert_same_situation(situation_from_request(fast), _model_situation(model))


def test_the_situation_featurizes_identically_with_either_request():
    demand = Scenario.default().arrays.demand
    for document in _bodies(30, 40, 7):
        body = json.dumps(document).encode()
        fast = screen_decide_request(body)
        assert fast is not None
        a = featurize(situation_from_request(fast), demand)
        b = featurize(_model_situation(DecideRequest.model_validate_json(body)), demand)
        for x, y in zip(a, b, strict=True):
            assert x.tobytes() == y.tobytes()


def test_the_demand_projection_is_reused_by_content_never_by_identity():
    situation = situation_from_request(screen_decide_request(json.dumps(_BASE[2]).encode()))  # type: ignore[arg-type]
    demand = Scenario.default().arrays.demand.copy()
    fresh = featurize(situation, demand)
    again = featurize(situation, demand)  # from the cache
    assert all(a.tobytes() == b.tobytes() for a, b in zip(fresh, again, strict=True))
    demand[0, 0] += 0.5  # changed in place: the same object, another map
    moved = featurize(situation, demand)
    assert moved.candidates.tobytes() != fresh.candidates.tobytes()
    featurizer._PROJECTIONS.clear()
    assert all(
        a.tobytes() == b.tobytes() for a, b in zip(moved, featurize(situation, demand), strict=True)
    )


@pytest.mark.parametrize(
    "spelling",
    [b"-0", b"-0.0", b"0e-400", b"-1e-400", b"1e-320", b"46.21447164194890000000000001",
     b"4.621447164194889e1", b"46.214471641948895", b"1E1", b"1.7976931348623157e308"],
)  # fmt: skip
def test_numbers_spelled_as_no_encoder_writes_them_give_the_models_values(spelling: bytes):
    """The parsers agree on signs of zero, underflow, excess digits and exponents."""
    document = json.loads(json.dumps(_BASE[0]))
    document["candidates"][0]["lat"] = document["booking"]["pickup"]["lat"] = 12345.5
    document["candidates"][1]["available_in_min"] = 67890.5
    raw = json.dumps(document).encode()
    raw = raw.replace(b"12345.5", spelling).replace(b"67890.5", spelling.lstrip(b"-"))
    fast = screen_decide_request(raw)
    try:
        model = DecideRequest.model_validate_json(raw)
    except ValidationError:
        assert fast is None
        return
    if spelling == b"-0":  # with the dropoff elsewhere: not the null island, and valid
        assert fast is not None
    if fast is not None:
        _assert_same_situation(situation_from_request(fast), _model_situation(model))
