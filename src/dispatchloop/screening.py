"""Fast screening of raw wire bytes: outcome events (ingest) and decide requests (serving).

`screen_outcome` is the ingest hot path's verdict on one record; `screen_decide_request`
(at the end of this module) is serving's `POST /v1/decide` body, with the same mirror
structs and the same rule: accept only what the models accept, as the same values, and
leave everything else to them.

Why it exists: the ingest loop only needs to know whether a record is a valid
schema-v1 event, and if so its four storage keys; the store keeps the raw bytes.
Building the full pydantic model (`events.parse_outcome`) for every record cost
more than fetching it from Kafka; msgspec decodes the same bytes into plain
structs about seven times faster (benchmarks/BENCHMARKS.md, "Ingest").

How it stays honest: the structs below mirror the pydantic models of `events.py`
field for field, bound for bound (tests/unit/test_screening.py compares them by
introspection, so a field added to one and not the other fails the build), and
they are *stricter* where the two libraries differ: no lax coercion ("2" for 2),
timestamps only in the RFC 3339 shape (parsed by `datetime.fromisoformat`,
which truncates sub-microsecond digits as pydantic does), UUIDs only as 32 hex
digits with or without hyphens, and a JSON parser that refuses NaN, Infinity
and numbers beyond float range. A record the fast path accepts is therefore one
`parse_outcome` accepts, with identical keys (a hypothesis test checks it on
mutated events). Anything the fast path does not accept is handed to
`parse_outcome`, which gives the verdict: so every dead letter carries exactly
the reason it always did, and a valid but unusual event ("priority": "2") is
still stored.

What the stores and other readers need (duplicate keys, depth, text a store can
hold) is decided without a second decode for the records a producer usually sends:
they are decoded into structs that know every field, learned at run time (the extra
fields a producer adds, which optional fields it omits), and the quotes of the bytes
are counted against the structs (the "typed path" below says why that is exact).
Anything else takes the exact way: decoded once into plain dicts, judged by
`events.document_rejection` (the function the models' path runs), then converted
into the structs. A record with a backslash (an escape) goes to the models straight
away. Booleans are not numbers in msgspec's strict decoding, as in the models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Any, Literal, Union, get_type_hints
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from dispatchloop.events import (
    MAX_CANDIDATES,
    EventKeys,
    Rejection,
    document_rejection,
    parse_outcome,
)

Latitude = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
Longitude = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Timestamp = Annotated[
    str,
    msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"),
]


# gc=False: these never form reference cycles, and thousands of them per poll
# would otherwise be tracked (and scanned) by the cyclic garbage collector.
# LatLon, Booking and Candidate are public: serving's `screen_decide_request` hands them
# to the featurizer (`situation_from_screened`), as the models' path hands the models.
class LatLonStruct(msgspec.Struct, gc=False):
    lat: Latitude
    lon: Longitude


class BookingStruct(msgspec.Struct, gc=False):
    booking_id: Identifier
    pickup: LatLonStruct
    dropoff: LatLonStruct
    window_start: Timestamp
    window_end: Timestamp
    priority: Annotated[int, msgspec.Meta(ge=1, le=3)]


class CandidateStruct(msgspec.Struct, gc=False):
    driver_id: Identifier
    lat: Latitude
    lon: Longitude
    available_in_min: Annotated[float, msgspec.Meta(ge=0.0, le=24 * 60)]
    queue_len: Annotated[int, msgspec.Meta(ge=0, le=1_000)]
    eligible: bool = True


class _Action(msgspec.Struct, gc=False):
    driver_id: Identifier
    policy: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    model_version: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    propensity: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None


class _Outcome(msgspec.Struct, gc=False):
    status: Literal["completed", "late", "cancelled"]
    pickup_delay_min: Annotated[float, msgspec.Meta(ge=-24 * 60, le=24 * 60)]
    empty_km: Annotated[float, msgspec.Meta(ge=0.0, le=10_000)]
    total_km: Annotated[float, msgspec.Meta(ge=0.0, le=10_000)]


class _Event(msgspec.Struct, gc=False):
    schema_version: Literal[1]
    event_id: UUID
    company_id: Identifier
    episode_id: Identifier
    step: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
    decided_at: Timestamp
    occurred_at: Timestamp
    booking: BookingStruct
    candidates: Annotated[
        list[CandidateStruct], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)
    ]
    action: _Action
    outcome: _Outcome
    reward: float | None = None


class _DecideRequest(msgspec.Struct, gc=False):
    decided_at: Timestamp
    booking: BookingStruct
    candidates: Annotated[
        list[CandidateStruct], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)
    ]
    company_id: Identifier | None = None


class ScreenedEvent(msgspec.Struct, gc=False, frozen=True):
    """The storage keys of an event that passed screening (an `events.EventKeys`)."""

    event_id: UUID
    episode_id: str
    step: int
    decided_at: datetime


# The mirror structs and their bounds are the tested part; the test module reads them here.
MIRRORED_MODELS = {
    "LatLon": LatLonStruct,
    "Booking": BookingStruct,
    "Candidate": CandidateStruct,
    "Action": _Action,
    "Outcome": _Outcome,
    "DispatchOutcomeEvent": _Event,
    "DecideRequest": _DecideRequest,
}
_GENERIC = msgspec.json.Decoder()


def screen_outcome(raw: bytes | None, max_bytes: int) -> EventKeys | Rejection:
    """Valid → the event's storage keys; invalid → the reason `parse_outcome` gives."""
    if raw is not None and len(raw) <= max_bytes:
        keys = _screen_fast(raw)
        if keys is not None:
            return keys
    return parse_outcome(raw, max_bytes)


def _screen_fast(raw: bytes) -> ScreenedEvent | None:
    """The keys when every rule visibly holds; None means "let pydantic decide"."""
    if b"\\" in raw:  # escapes: U+0000, surrogates, quotes in strings are the models' call
        return None
    event = _decode_typed(raw)
    if event is None:  # an unknown field not learned, an extra that is not a scalar, ...
        return _screen_documented(raw)
    return _keys_if_consistent(event)


def _screen_documented(raw: bytes) -> ScreenedEvent | None:
    """The exact fallback: plain dicts judged by `document_rejection`, then the structs."""
    try:
        document = _GENERIC.decode(raw)
        if type(document) is not dict or document_rejection(raw, document) is not None:
            return None
        event = msgspec.convert(document, _Event)  # cheaper than decoding the bytes again
    except (msgspec.DecodeError, ValueError, RecursionError):
        # ValidationError is a DecodeError; RecursionError: nesting beyond msgspec's limit
        return None
    return _keys_if_consistent(event)


def _keys_if_consistent(event: Any) -> ScreenedEvent | None:
    """The cross-field rules on decoded structs (mirror or learned ones)."""
    try:
        decided_at = datetime.fromisoformat(event.decided_at)
        occurred_at = datetime.fromisoformat(event.occurred_at)
        window_start = datetime.fromisoformat(event.booking.window_start)
        window_end = datetime.fromisoformat(event.booking.window_end)
    except ValueError:
        return None
    if (
        occurred_at < decided_at
        or window_end < window_start
        or _is_null_island(event.booking.pickup)
        or _is_null_island(event.booking.dropoff)
        or not _action_among_unique_candidates(event)
    ):
        return None
    return ScreenedEvent(event.event_id, event.episode_id, event.step, decided_at)


def _is_null_island(point: Any) -> bool:
    return bool(point.lat == 0.0 and point.lon == 0.0)


def _action_among_unique_candidates(event: Any) -> bool:
    drivers = {candidate.driver_id for candidate in event.candidates}
    return len(drivers) == len(event.candidates) and event.action.driver_id in drivers


# --- the typed path: structs that know every field, so the bytes' quotes can be counted --
#
# The hardening's exact checks (duplicate keys, depth, unstorable text) cost a second
# decode into plain dicts as long as the mirror structs skip unknown fields. The structs
# below are the mirror's, derived mechanically, with what this producer sends learned:
#   - forbid_unknown_fields: every key of every object is a field of its struct;
#   - a field the models default (eligible, model_version, propensity, reward) is
#     required until a record lacks it, then defaults to UNSET: "absent" and "present
#     with the default value" stay distinguishable;
#   - the extra keys a producer adds (ignored by the models) are learned at run time from
#     msgspec's "unknown field" error and become fields: a required string until a
#     record lacks it or holds another scalar, then one optional JSON scalar. An extra
#     holding an object or an array fails the typed decode.
# Then, in bytes without a backslash, every `"` opens or closes a key or a string value,
# and each key and string value of the bytes is one field (or one field's string value)
# of the decoded structs, unless a key appears twice in one object: the structs keep one
# copy, and the bytes have at least two quotes more. So "no duplicate key" is exactly
# `raw.count(b'"') == _expected_quotes(event)`. Every object or array of the bytes is one
# struct or the candidates list, so the depth is 3. msgspec refuses raw control
# characters (U+0000 included) and invalid UTF-8 in the strings it decodes (all of them
# here, nothing is skipped; other bytes are checked here), and without a backslash no
# escape can spell a surrogate. Whatever this path cannot decode or learn goes to
# `_screen_documented`, the exact check on plain dicts. What was learned changes the
# cost of a record, never its verdict.

_Extra = str | int | float | bool | None
MAX_LEARNED_EXTRAS = 32
"""Extra field names learned per process; beyond it, more unknown fields take the exact path."""

_DEFAULTED = {  # the fields the models give a default, and their struct
    "eligible": "candidate",
    "model_version": "action",
    "propensity": "action",
    "reward": "event",
}
# Quotes of the always-required keys and string values: event 32, booking 18 + 2 × 4
# (pickup, dropoff), action 8, outcome 10; a candidate 12. Tests pin both, and the whole
# count, to msgspec's own encoding of the structs.
_FIXED_QUOTES = 76
_CANDIDATE_QUOTES = 12
_LEVEL_PATHS = {
    "event": ("",),
    "booking": (".booking",),
    "latlon": (".booking.pickup", ".booking.dropoff"),
    "candidate": (".candidates",),
    "action": (".action",),
    "outcome": (".outcome",),
}
_LEVELS = {path: level for level, paths in _LEVEL_PATHS.items() for path in paths}
_UNKNOWN = "Object contains unknown field `"
_MISSING = "Object missing required field `"
_NOT_A_STRING = "Expected `str`, got `"
_AT = " - at `$"
_INDEX = re.compile(r"\[\d+\]")
_ELIGIBLE = attrgetter("eligible")

# An extra field: (its JSON key, a string in every record so far).
_ExtraField = tuple[str, bool]


class _Learned:
    """The typed decoder for the producer's shape learned so far."""

    def __init__(
        self, optional: frozenset[str], extras: dict[str, tuple[_ExtraField, ...]]
    ) -> None:
        self.optional = optional
        self.extras = extras
        self.count = sum(map(len, extras.values()))
        latlon = self._struct("latlon", LatLonStruct, {})
        booking = self._struct("booking", BookingStruct, {"pickup": latlon, "dropoff": latlon})
        candidate = self._struct("candidate", CandidateStruct, {})
        candidates = Annotated[
            list[candidate],  # type: ignore[valid-type]
            msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES),
        ]
        replace = {
            "booking": booking,
            "candidates": candidates,
            "action": self._struct("action", _Action, {}),
            "outcome": self._struct("outcome", _Outcome, {}),
        }
        self.decoder = msgspec.json.Decoder(self._struct("event", _Event, replace))
        # What every record holds is counted once here; the rest per record.
        fixed = _FIXED_QUOTES + 2 * sum(
            name not in optional for name, level in _DEFAULTED.items() if level != "candidate"
        )
        per_candidate = _CANDIDATE_QUOTES + (0 if "eligible" in optional else 2)
        loose_single: list[str] = []
        self.loose_candidate: list[Any] = []
        for level, fields in extras.items():
            for index, (_, text) in enumerate(fields):
                attribute = f"extra{index}_"
                if text and level == "candidate":
                    per_candidate += 4
                elif text:
                    fixed += 4 * len(_LEVEL_PATHS[level])
                elif level == "candidate":
                    self.loose_candidate.append(attrgetter(attribute))
                else:
                    loose_single.extend(
                        f"{path[1:]}.{attribute}" if path else attribute
                        for path in _LEVEL_PATHS[level]
                    )
        self.fixed_quotes, self.candidate_quotes = fixed, per_candidate
        self.loose_single = attrgetter(*loose_single, "step") if loose_single else None
        self.loose = bool(optional or loose_single or self.loose_candidate)

    def _struct(self, level: str, mirror: type[msgspec.Struct], replace: dict[str, Any]) -> Any:
        hints = get_type_hints(mirror, include_extras=True)
        fields: list[Any] = []
        for name in mirror.__struct_fields__:
            kind = replace.get(name, hints[name])
            optional = name in self.optional
            fields.append((name, Union[kind, UnsetType], UNSET) if optional else (name, kind))  # noqa: UP007
        rename = {}
        for index, (key, text) in enumerate(self.extras.get(level, ())):
            attribute = f"extra{index}_"
            rename[attribute] = key
            optional_extra = (attribute, Union[_Extra, UnsetType], UNSET)  # noqa: UP007
            fields.append((attribute, str) if text else optional_extra)
        return msgspec.defstruct(
            f"_Typed{mirror.__name__}",
            fields,
            gc=False,
            kw_only=True,  # a required extra may follow a defaulted field
            forbid_unknown_fields=True,
            rename=rename,
        )

    def learn(self, error: msgspec.ValidationError) -> _Learned | None:
        """The shape that also allows what `error` refused, or None if it is no shape's."""
        message = str(error)
        if message.startswith(_NOT_A_STRING):  # "… - at `$.booking.key`"
            path = _INDEX.sub("", message.rpartition(_AT)[2][:-1])
            for level, paths in _LEVEL_PATHS.items():
                for prefix in paths:
                    if path.startswith(f"{prefix}."):
                        demoted = self._demoted(level, path[len(prefix) + 1 :])
                        if demoted is not None:
                            return demoted
            return None
        for start in (_UNKNOWN, _MISSING):
            if message.startswith(start):
                break
        else:
            return None
        # "…field `name`" at the top, "…field `name` - at `$.booking`" below it; the path
        # only names the structs' own fields (extras are scalars), so split at its start.
        body = message[len(start) : -1]
        name, at, path = body.rpartition(f"`{_AT}")
        if not at:
            name, path = body, ""
        found = _LEVELS.get(_INDEX.sub("", path))
        if found is None:
            return None
        level = found
        if start == _MISSING:
            if _DEFAULTED.get(name) == level and name not in self.optional:
                return _Learned(self.optional | {name}, self.extras)
            return self._demoted(level, name)
        if self.count >= MAX_LEARNED_EXTRAS or name in self._keys(level):
            return None
        added = (*self.extras.get(level, ()), (name, True))
        return _Learned(self.optional, {**self.extras, level: added})

    def _keys(self, level: str) -> list[str]:
        return [key for key, _ in self.extras.get(level, ())]

    def _demoted(self, level: str, name: str) -> _Learned | None:
        """The shape where the string extra `name` of `level` is any optional scalar."""
        fields = self.extras.get(level, ())
        if (name, True) not in fields:
            return None
        loosened = tuple((key, text and key != name) for key, text in fields)
        return _Learned(self.optional, {**self.extras, level: loosened})


class _Current:
    """The shape learned so far in this process (screening runs on the loop's thread)."""

    learned = _Learned(frozenset(), {})


def _decode_typed(raw: bytes) -> Any:
    """The learned structs of a record whose quotes prove it has no duplicate key, or None."""
    if not raw.isascii():
        try:  # invalid UTF-8 anywhere (msgspec checks the strings, not what lies between)
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    learned: _Learned | None = _Current.learned
    while learned is not None:  # each round learns one thing more: bounded
        try:
            event = learned.decoder.decode(raw)
            break
        except msgspec.ValidationError as exc:
            learned = learned.learn(exc)
            if learned is not None:
                _Current.learned = learned
        except (msgspec.DecodeError, RecursionError):
            return None
    else:
        return None
    if raw.count(b'"') != _expected_quotes(event, learned):
        return None  # a duplicate key: the exact path names it
    return event


def _expected_quotes(event: Any, learned: _Learned) -> int:
    """Quotes of the JSON keys and string values the decoded structs hold."""
    candidates = event.candidates
    quotes = learned.fixed_quotes + learned.candidate_quotes * len(candidates)
    if type(event.action.model_version) is str:
        quotes += 2
    if learned.loose:
        quotes += _loose_quotes(event, learned)
    return quotes


def _loose_quotes(event: Any, learned: _Learned) -> int:
    """Quotes of the fields some records have and others not."""
    candidates = event.candidates
    optional = learned.optional
    quotes = 0
    if "eligible" in optional:
        quotes += 2 * (len(candidates) - list(map(_ELIGIBLE, candidates)).count(UNSET))
    owners = {"model_version": event.action, "propensity": event.action, "reward": event}
    for name in optional:
        if name != "eligible" and getattr(owners[name], name) is not UNSET:
            quotes += 2
    values: tuple[Any, ...] = ()
    if learned.loose_single is not None:
        values = learned.loose_single(event)[:-1]  # "step" keeps it a tuple
    for getter in learned.loose_candidate:
        values = (*values, *map(getter, candidates))
    # an extra present: its key (2), and its value's quotes if it is a string (2)
    return quotes + 2 * (len(values) - values.count(UNSET) + list(map(type, values)).count(str))


# --- serving's request: `POST /v1/decide` without building the pydantic models -----------
#
# The same mirror structs (`_DecideRequest` is compared with `DecideRequest` like the
# others), derived with forbid_unknown_fields: a request holding any key the contract
# does not name (ignored by the models) takes the models' path, so extras (NaN, deep
# nesting, numbers beyond float range in a field nobody reads) never need a verdict
# here. Both parsers keep the last copy of a duplicated key. Bytes with a backslash
# (escapes) and invalid UTF-8 go to the models too. What is accepted then passes every
# rule the models check (timestamps as in `_keys_if_consistent`, window order, no
# (0, 0) pickup or dropoff, unique driver ids, one eligible driver); anything else is
# None, and `DecideRequest.model_validate_json` gives the verdict (422 or a decision).


class ScreenedDecideRequest(msgspec.Struct, gc=False, frozen=True):
    """A `DecideRequest` screening accepted: the decoded structs, timestamps parsed."""

    decided_at: datetime
    window_start: datetime
    """`booking.window_start` parsed (the struct keeps the text)."""
    window_end: datetime
    booking: BookingStruct
    candidates: Sequence[CandidateStruct]
    company_id: str | None


# The mirrors refusing unknown keys: subclasses, so a decoded request holds the structs'
# own types (and their fields, bounds and defaults, which a subclass cannot drop).
class _StrictLatLon(LatLonStruct, forbid_unknown_fields=True):
    pass


class _StrictBooking(BookingStruct, forbid_unknown_fields=True):
    pickup: _StrictLatLon
    dropoff: _StrictLatLon


class _StrictCandidate(CandidateStruct, forbid_unknown_fields=True):
    pass


class _StrictDecideRequest(_DecideRequest, forbid_unknown_fields=True):
    booking: _StrictBooking
    candidates: Annotated[  # type: ignore[assignment]  # list is invariant; read-only here
        list[_StrictCandidate], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)
    ]


STRICT_MIRRORS = {
    _StrictLatLon: LatLonStruct,
    _StrictBooking: BookingStruct,
    _StrictCandidate: CandidateStruct,
    _StrictDecideRequest: _DecideRequest,
}
"""Each strict struct and the mirror it must equal but for unknown keys (tested)."""
_DECIDE = msgspec.json.Decoder(_StrictDecideRequest)


def screen_decide_request(raw: bytes) -> ScreenedDecideRequest | None:
    """The request when every rule of `DecideRequest` visibly holds; None: ask the models."""
    if b"\\" in raw or (not raw.isascii() and not _is_utf8(raw)):
        return None
    try:
        request = _DECIDE.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    booking, candidates = request.booking, request.candidates
    try:
        decided_at = datetime.fromisoformat(request.decided_at)
        window_start = datetime.fromisoformat(booking.window_start)
        window_end = datetime.fromisoformat(booking.window_end)
    except ValueError:
        return None
    if (
        window_end < window_start
        or _is_null_island(booking.pickup)
        or _is_null_island(booking.dropoff)
        or len({candidate.driver_id for candidate in candidates}) != len(candidates)
        or not any(candidate.eligible for candidate in candidates)
    ):
        return None
    return ScreenedDecideRequest(
        decided_at, window_start, window_end, booking, candidates, request.company_id
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
