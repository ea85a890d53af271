"""Fast screening of raw outcome events: the ingest hot path's verdict on one record.

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
hold) is the one function `events.document_rejection` on both paths: screening
decodes the bytes once into plain dicts, asks it about that document (cheap when
nothing is wrong), then converts the dicts into the structs. A record with a
backslash (an escape) goes to the models straight away. Booleans are not numbers in
msgspec's strict conversion, as in the models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

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
class _LatLon(msgspec.Struct, gc=False):
    lat: Latitude
    lon: Longitude


class _Booking(msgspec.Struct, gc=False):
    booking_id: Identifier
    pickup: _LatLon
    dropoff: _LatLon
    window_start: Timestamp
    window_end: Timestamp
    priority: Annotated[int, msgspec.Meta(ge=1, le=3)]


class _Candidate(msgspec.Struct, gc=False):
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
    booking: _Booking
    candidates: Annotated[list[_Candidate], msgspec.Meta(min_length=1, max_length=MAX_CANDIDATES)]
    action: _Action
    outcome: _Outcome
    reward: float | None = None


class ScreenedEvent(msgspec.Struct, gc=False, frozen=True):
    """The storage keys of an event that passed screening (an `events.EventKeys`)."""

    event_id: UUID
    episode_id: str
    step: int
    decided_at: datetime


# The mirror structs and their bounds are the tested part; the test module reads them here.
MIRRORED_MODELS = {
    "LatLon": _LatLon,
    "Booking": _Booking,
    "Candidate": _Candidate,
    "Action": _Action,
    "Outcome": _Outcome,
    "DispatchOutcomeEvent": _Event,
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
    try:
        document = _GENERIC.decode(raw)
        if type(document) is not dict or document_rejection(raw, document) is not None:
            return None
        event = msgspec.convert(document, _Event)  # cheaper than decoding the bytes again
        decided_at = datetime.fromisoformat(event.decided_at)
        occurred_at = datetime.fromisoformat(event.occurred_at)
        window_start = datetime.fromisoformat(event.booking.window_start)
        window_end = datetime.fromisoformat(event.booking.window_end)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # ValidationError is a DecodeError; RecursionError: nesting beyond msgspec's limit
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


def _is_null_island(point: _LatLon) -> bool:
    return point.lat == 0.0 and point.lon == 0.0


def _action_among_unique_candidates(event: _Event) -> bool:
    drivers = {candidate.driver_id for candidate in event.candidates}
    return len(drivers) == len(event.candidates) and event.action.driver_id in drivers
