"""The ingest loop's fast screening agrees with the pydantic contract it mirrors.

Three things must hold (screening.py's docstring says why): the mirror structs
carry the same fields and bounds as the models; whatever the fast path accepts,
`parse_outcome` accepts with identical storage keys; everything else gets
exactly `parse_outcome`'s verdict.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dispatchloop import events as contract
from dispatchloop import screening
from dispatchloop.events import DispatchOutcomeEvent, Rejection, parse_outcome
from dispatchloop.screening import MIRRORED_MODELS, ScreenedEvent, screen_outcome
from dispatchloop.testing.events import (
    HOSTILE_KINDS,
    MALFORMED_KINDS,
    delete_path,
    encode,
    event_stream,
    hostile_record,
    json_paths,
    malformed_record,
    set_path,
)

LIMIT = 65_536
BOUNDS = ("ge", "gt", "le", "lt", "min_length", "max_length")


def _model_bounds(field: FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    constraints = list(field.metadata)
    for member in get_args(field.annotation):  # `Identifier | None`: Identifier's own bounds
        for extra in get_args(member)[1:]:  # Annotated[str, FieldInfo(...)]
            constraints += getattr(extra, "metadata", [extra])
    for constraint in constraints:
        for name in BOUNDS:
            if getattr(constraint, name, None) is not None:
                found[name] = getattr(constraint, name)
    return found


def _struct_bounds(kind: msgspec.inspect.Type) -> dict[str, Any]:
    if isinstance(kind, msgspec.inspect.UnionType):  # `X | None`: the bounds are on X
        (kind,) = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
    return {name: getattr(kind, name) for name in BOUNDS if getattr(kind, name, None) is not None}


@pytest.mark.parametrize("name", sorted(MIRRORED_MODELS))
def test_mirror_has_the_models_fields_requiredness_defaults_and_bounds(name: str):
    model: type[BaseModel] = getattr(contract, name)
    info = msgspec.inspect.type_info(MIRRORED_MODELS[name])
    assert isinstance(info, msgspec.inspect.StructType)
    mirrored = {field.name: field for field in info.fields}
    assert set(mirrored) == set(model.model_fields)
    for field_name, model_field in model.model_fields.items():
        struct_field = mirrored[field_name]
        assert struct_field.required == model_field.is_required(), field_name
        if not struct_field.required:
            assert struct_field.default == model_field.default, field_name
        assert _struct_bounds(struct_field.type) == _model_bounds(model_field), field_name


def test_realistic_events_take_the_fast_path_with_the_models_keys():
    for event in event_stream(seed=5, n_events=300):
        raw = encode(event)
        screened = screen_outcome(raw, LIMIT)
        parsed = parse_outcome(raw, LIMIT)
        assert isinstance(screened, ScreenedEvent)
        assert isinstance(parsed, DispatchOutcomeEvent)
        assert _keys(screened) == _keys(parsed)


def test_malformed_records_get_the_models_reason():
    valid = next(event_stream(seed=6, n_events=1))
    rng = np.random.default_rng(1)
    for kind in MALFORMED_KINDS:
        raw = malformed_record(rng, kind, valid)
        screened = screen_outcome(raw, LIMIT)
        assert isinstance(screened, Rejection)
        assert screened == parse_outcome(raw, LIMIT)
        assert screened.reason == kind


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("booking", "priority"), "2"),  # pydantic's lax mode coerces it
        (("step",), 4.0),
        (("event_id",), "{0b6f1c2e-6d0a-4a53-9d84-2f0f6c3f5a10}"),
        (("decided_at",), "2026-11-23T06:00:00.1234567Z"),  # truncated to µs, not rounded
        (("candidates", 0, "eligible"), "true"),
    ],
)
def test_valid_but_unusual_events_are_still_stored_with_the_models_keys(
    path: tuple[Any, ...], value: Any
):
    event = next(event_stream(seed=7, n_events=1))
    set_path(event, path, value)
    raw = encode(event)
    screened = screen_outcome(raw, LIMIT)
    assert isinstance(screened, DispatchOutcomeEvent), "decided by the model, and valid"
    assert screened == parse_outcome(raw, LIMIT)


# --- property: fast acceptance implies the model's acceptance, keys identical -------------

_TIMESTAMPS = [
    "2026-11-23T06:00:00Z",
    "2026-11-23T06:00:00+01:00",
    "2026-11-23T06:00:00.999999999Z",
    "2026-11-23T06:00:00.5-00:00",
    "2026-11-23 06:00:00Z",
    "2026-11-23t06:00:00z",
    "2026-11-23T06:00Z",
    "2026-11-23T06:00:00",
    "2026-02-30T06:00:00Z",
    "2026-11-23T06:00:00+23:59",
    "2026-11-23T06:00:00.000001Z",
    "2026-11-23T05:59:59.9999999Z",
    "2026-11-23T06:00:00-00:01",
    "1700000000",
]
_TIMESTAMP_PATHS = [
    ("decided_at",),
    ("occurred_at",),
    ("booking", "window_start"),
    ("booking", "window_end"),
]
_TRICKY_STRINGS = [
    *_TIMESTAMPS,
    "",
    "x" * 256,
    "x" * 257,
    "d-0",
    "d-1",
    "completed",
    "lost",
    "1",
    "12345678123456781234567812345678",
    "12345678-1234-5678-1234-567812345678",
    "urn:uuid:12345678-1234-5678-1234-567812345678",
    "\u00e9\u0000",
]
_TRICKY_NUMBERS = [0, 0.0, -0.0, 1, 1.0, 2, 3, 4, -1, 1e-300, 1.0000001, 90, 90.000001, -180, 180.5]
_TRICKY_NUMBERS += [1440, 1440.01, 1000, 1001, 10_000, 10_000.5, 10_000_000, 10_000_001, 2**63]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_TRICKY_NUMBERS),
    st.integers(),
    st.floats(),
    st.sampled_from(_TRICKY_STRINGS),
    st.text(max_size=4),
    st.just([]),
    st.just({}),
    st.just([{"lat": 1.0}]),
)
_BASES = [*event_stream(seed=8, n_events=3)]


Mutation = tuple[int, list[tuple[Any, ...]], list[tuple[str, int, Any]], str]
_MUTATION = st.tuples(
    st.sampled_from(range(len(_BASES))),
    # the fields where the two parsers differ most get changes of their own
    st.lists(
        st.tuples(st.sampled_from(_TIMESTAMP_PATHS), st.sampled_from(_TIMESTAMPS)), max_size=2
    ),
    st.lists(
        st.tuples(st.sampled_from(["set", "delete"]), st.integers(0, 10_000), _VALUES), max_size=3
    ),
    st.sampled_from(["", "bom", "junk", "duplicate_key", "whitespace"]),
)


def _mutated(mutation: Mutation) -> bytes:
    base, timestamp_changes, changes, framing = mutation
    event = json.loads(json.dumps(_BASES[base]))
    for path, moment in timestamp_changes:
        set_path(event, path, moment)
    for operation, pick, value in changes:
        paths = json_paths(event)
        if not paths:
            break
        path = paths[pick % len(paths)]
        if operation == "set":
            set_path(event, path, json.loads(json.dumps(value)))  # a copy: no shared sub-objects
        else:
            delete_path(event, path)
    raw = json.dumps(event).encode()
    if framing == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif framing == "junk":
        raw += b"x"
    elif framing == "duplicate_key" and raw.startswith(b"{"):
        raw = b'{"step": 3, "decided_at": "2026-11-23T05:00:00Z", ' + raw[1:]
    elif framing == "whitespace":
        raw = b" \n" + raw + b"\t "
    return raw


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MUTATION)
def test_fast_acceptance_implies_the_models_acceptance_with_identical_keys(mutation: Mutation):
    raw = _mutated(mutation)
    screened = screen_outcome(raw, LIMIT)
    parsed = parse_outcome(raw, LIMIT)
    if isinstance(screened, ScreenedEvent):
        assert isinstance(parsed, DispatchOutcomeEvent), f"fast path accepted {parsed}"
        assert _keys(screened) == _keys(parsed)
    else:
        assert screened == parsed


def _keys(event: Any) -> tuple[Any, ...]:
    # Equal aware datetimes can differ in tzinfo class; the instant and offset must match.
    moment = event.decided_at
    return (event.event_id, event.episode_id, event.step, moment, moment.utcoffset())


# --- what the stores and other readers need: both paths agree, with reasons of their own ---


def _with(mutate: Any) -> bytes:
    event = next(event_stream(seed=9, n_events=1))
    result = mutate(event)
    return result if isinstance(result, bytes) else encode(event)


def _nested(levels: int) -> Any:
    return lambda e: e.update(extra=json.loads("[" * levels + "]" * levels))


_HOSTILE = {
    "duplicate top-level key": (lambda e: encode(e)[:-1] + b',"step":5}', "duplicate_key"),
    "duplicate key, same value": (lambda e: encode(e)[:-1] + b',"step":0}', "duplicate_key"),
    "duplicate key in a candidate": (
        lambda e: encode(e).replace(b'"queue_len":', b'"queue_len":1,"queue_len":', 1),
        "duplicate_key",
    ),
    "duplicate key hidden by whitespace": (
        lambda e: encode(e)[:-1] + b',"step" :5}',
        "duplicate_key",
    ),
    "duplicate extra key": (lambda e: encode(e)[:-1] + b',"x":1,"x":2}', "duplicate_key"),
    "nesting of 33": (_nested(32), "too_deep"),
    "nesting of 5000": (
        lambda e: encode(e)[:-1] + b',"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "too_deep",
    ),
    "U+0000 in an identifier": (lambda e: e.update(episode_id="ep\u0000"), "unstorable_text"),
    "U+0000 in an extra field": (lambda e: e.update(note="\u0000"), "unstorable_text"),
    "U+0000 in a key": (lambda e: e.update({"k\u0000": 1}), "unstorable_text"),
    "unpaired surrogate": (lambda e: e.update(company_id="acme\ud800"), "unstorable_text"),
    "boolean step": (lambda e: e.update(step=True), "invalid_field"),
    "boolean reward": (lambda e: e.update(reward=False), "invalid_field"),
    "boolean latitude": (lambda e: e["booking"]["pickup"].update(lat=True), "invalid_field"),
    "boolean propensity": (lambda e: e["action"].update(propensity=True), "invalid_field"),
    "boolean queue_len": (lambda e: e["candidates"][0].update(queue_len=False), "invalid_field"),
    "boolean schema_version": (lambda e: e.update(schema_version=True), "unknown_schema_version"),
}


@pytest.mark.parametrize("case", sorted(_HOSTILE))
def test_hostile_records_are_refused_alike_by_both_paths(case: str):
    mutate, reason = _HOSTILE[case]
    raw = _with(mutate)
    screened = screen_outcome(raw, LIMIT)
    assert isinstance(screened, Rejection), case
    assert screened.reason == reason, screened
    assert screened == parse_outcome(raw, LIMIT)


@pytest.mark.parametrize(
    "case",
    ["nesting of 32", "escaped accents", "pretty-printed", "colon in a value", "quote in a value"],
)
def test_doubtful_but_valid_records_are_stored_with_the_models_keys(case: str):
    event = next(event_stream(seed=10, n_events=1))
    raw = {
        "nesting of 32": lambda: _with(_nested(31)),
        "escaped accents": lambda: json.dumps({**event, "note": "Genève ☃"}).encode(),
        "pretty-printed": lambda: json.dumps(event, indent=2).encode(),
        "colon in a value": lambda: encode({**event, "note": 'a":b'}),
        "quote in a value": lambda: encode({**event, "note": 'say "hi" :'}),
    }[case]()
    screened = screen_outcome(raw, LIMIT)
    parsed = parse_outcome(raw, LIMIT)
    assert isinstance(parsed, DispatchOutcomeEvent), parsed
    assert not isinstance(screened, Rejection), screened
    assert _keys(screened) == _keys(parsed)


@pytest.mark.parametrize("kind", sorted(HOSTILE_KINDS))
def test_every_kind_of_the_hostile_zoo_gets_its_reason_on_both_paths(kind: str):
    valid = next(event_stream(seed=11, n_events=1))
    raw = hostile_record(np.random.default_rng(2), kind, valid)
    screened = screen_outcome(raw, LIMIT)
    assert screened == parse_outcome(raw, LIMIT)
    assert isinstance(screened, Rejection) and screened.reason == HOSTILE_KINDS[kind]


# --- the typed path: a learned shape, and the bytes' quotes counted against its structs ---


@pytest.fixture
def fresh_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """Screening as in a new process: nothing learned yet."""
    monkeypatch.setattr(screening._Current, "learned", screening._Learned(frozenset(), {}))


def _producer_shapes() -> dict[str, bytes]:
    """Valid records of producers that add, omit and vary fields at every level."""
    event = next(event_stream(seed=12, n_events=1))

    def varied(mutate: Any) -> bytes:
        copy = json.loads(json.dumps(event))
        mutate(copy)
        return encode(copy)

    def everywhere(copy: dict[str, Any]) -> None:
        copy["x_top"] = "t"
        copy["booking"]["x_booking"] = 3
        copy["booking"]["pickup"]["x_point"] = None
        copy["booking"]["dropoff"]["x_point"] = "door 2"
        for index, candidate in enumerate(copy["candidates"]):
            candidate["x_vehicle"] = f"v-{index}" if index % 2 else 2.5
        copy["action"]["x_latency_ms"] = True
        copy["outcome"]["x_note"] = "ok"

    def omitted(copy: dict[str, Any]) -> None:
        for name in ("reward", "dispatcher_node"):
            copy.pop(name)
        copy["action"].pop("model_version")
        copy["action"].pop("propensity")
        for candidate in copy["candidates"][::2]:
            candidate.pop("eligible")

    return {
        "realistic": encode(event),
        "pretty-printed": json.dumps(event, indent=2).encode(),
        "extras at every level": varied(everywhere),
        "defaults omitted": varied(omitted),
        "model_version a string": varied(lambda e: e["action"].update(model_version="m-3")),
        "an extra of another type": varied(lambda e: e.update(dispatcher_node=7)),
        "extras and omissions": varied(lambda e: (everywhere(e), omitted(e))),
    }


@pytest.mark.usefixtures("fresh_shape")
def test_learned_shapes_take_the_typed_path_with_the_models_keys_and_exact_quotes():
    shapes = _producer_shapes()
    for _ in range(2):  # the first round learns, the second finds everything known
        for case, raw in shapes.items():
            screened = screen_outcome(raw, LIMIT)
            parsed = parse_outcome(raw, LIMIT)
            assert isinstance(parsed, DispatchOutcomeEvent), (case, parsed)
            assert isinstance(screened, ScreenedEvent), (case, screened)
            assert _keys(screened) == _keys(parsed)
            event = screening._decode_typed(raw)
            assert event is not None, case  # the typed path, not the exact fallback
            learned = screening._Current.learned
            # the count the check relies on is msgspec's own: what the structs hold
            expected = screening._expected_quotes(event, learned)
            assert expected == msgspec.json.encode(event).count(b'"') == raw.count(b'"'), case


_DUPLICATED = {  # a key of each object, and what to put before its first occurrence
    "top level": (b'"episode_id":', b'"episode_id":"other",'),
    "booking": (b'"booking_id":', b'"booking_id":"b-0",'),
    "point": (b'"lat":', b'"lat":1.0,'),
    "point, other key": (b'"lon":', b'"lon":2.0,'),
    "a whole object": (b'"outcome":', b'"outcome":{},'),
    "candidate": (b'"eligible":', b'"eligible":true,'),
    "action": (b'"propensity":', b'"propensity":0.5,'),
    "optional, null": (b'"model_version":', b'"model_version":null,'),
    "outcome": (b'"status":', b'"status":"late",'),
    "learned extra": (b'"patient_mobility":', b'"patient_mobility":"seated",'),
    "learned extra, other type": (b'"dispatcher_node":', b'"dispatcher_node":1,'),
    "reward": (b'"reward":', b'"reward":null,'),
}


@pytest.mark.usefixtures("fresh_shape")
@pytest.mark.parametrize("case", sorted(_DUPLICATED))
def test_a_duplicate_key_anywhere_is_refused_after_the_shape_is_learned(case: str):
    valid = encode(next(event_stream(seed=13, n_events=1)))
    assert isinstance(screen_outcome(valid, LIMIT), ScreenedEvent)  # learns the extras
    anchor, repeated = _DUPLICATED[case]
    assert anchor in valid
    raw = valid.replace(anchor, repeated + anchor, 1)
    assert screening._decode_typed(raw) is None
    screened = screen_outcome(raw, LIMIT)
    assert screened == parse_outcome(raw, LIMIT)
    assert isinstance(screened, Rejection) and screened.reason == "duplicate_key", screened


@pytest.mark.usefixtures("fresh_shape")
def test_verdicts_do_not_depend_on_what_was_learned():
    event = next(event_stream(seed=14, n_events=1))
    for index in range(screening.MAX_LEARNED_EXTRAS + 5):  # a producer of random keys
        screen_outcome(encode({**event, f"junk-{index}": index}), LIMIT)
    assert screening._Current.learned.count == screening.MAX_LEARNED_EXTRAS
    beyond = encode({**event, "never-learned": "x"})
    assert screening._decode_typed(beyond) is None  # the budget is spent: the exact path
    records = [beyond, *_producer_shapes().values(), *(_with(m) for m, _ in _HOSTILE.values())]
    records += [
        encode({**event, "meta": {"a": 1, "b": [2]}}),
        encode({**event, "meta": {"a": 1}})[:-2] + b',"a":2}}',
        encode({**event, "note": 'a":b'}),
    ]
    for raw in records:
        screened = screen_outcome(raw, LIMIT)
        parsed = parse_outcome(raw, LIMIT)
        if isinstance(parsed, Rejection):
            assert screened == parsed
        else:
            assert not isinstance(screened, Rejection) and _keys(screened) == _keys(parsed)


@pytest.mark.usefixtures("fresh_shape")
def test_an_extra_holding_an_object_takes_the_exact_path():
    event = next(event_stream(seed=15, n_events=1))
    nested = encode({**event, "meta": {"a": 1}})
    assert screening._decode_typed(nested) is None
    assert isinstance(screen_outcome(nested, LIMIT), ScreenedEvent)
    duplicate = nested[:-2] + b',"a":2}}'
    assert screen_outcome(duplicate, LIMIT) == parse_outcome(duplicate, LIMIT)
    assert screen_outcome(duplicate, LIMIT).reason == "duplicate_key"  # type: ignore[union-attr]
