"""The wire events (DESIGN.md, "Wire contract"), as pydantic v2 models.

`parse_outcome` is the one way raw Kafka bytes become a `DispatchOutcomeEvent`:
it validates straight from bytes (faster than json.loads + validate) and maps
every failure to a short machine-readable reason for the dead-letter topic.

Before the models see a document, `document_rejection` refuses what no reader of
the raw bytes could agree on or no store could hold: duplicate keys (JSON readers
differ on which copy wins), nesting deeper than MAX_JSON_DEPTH, and strings holding
U+0000 or an unpaired surrogate (PostgreSQL text refuses the first, UTF-8 cannot
encode the second). Numbers are never booleans: `"step": true` is not 1 here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple, Protocol
from uuid import UUID

import msgspec
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1
MAX_CANDIDATES = 64
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays accepted anywhere in an event (schema v1 needs 3)."""


def _not_a_boolean(value: Any) -> Any:
    """JSON true/false are not numbers (pydantic's lax mode would read them as 1/0)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "a boolean is not a number")
    return value


NoBool = BeforeValidator(_not_a_boolean)
FiniteFloat = Annotated[float, Field(allow_inf_nan=False), NoBool]
Integer = Annotated[int, NoBool]
# For `X | None` fields with bounds: a validator inside the union would hide the bounds
# from the JSON Schema, so these check booleans with a field validator instead.
OptionalFloat = Annotated[float, Field(allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=256)]


class _Wire(BaseModel):
    # Unknown extra fields are kept in the raw bytes the store saves, and ignored here.
    model_config = ConfigDict(extra="ignore", frozen=True)


class LatLon(_Wire):
    lat: FiniteFloat = Field(ge=-90.0, le=90.0)
    lon: FiniteFloat = Field(ge=-180.0, le=180.0)

    @model_validator(mode="after")
    def _not_null_island(self) -> LatLon:
        if self.lat == 0.0 and self.lon == 0.0:
            raise PydanticCustomError(
                "implausible_coordinates", "coordinates (0, 0) are a missing position"
            )
        return self


class Booking(_Wire):
    booking_id: Identifier
    pickup: LatLon
    dropoff: LatLon
    window_start: AwareDatetime
    window_end: AwareDatetime
    priority: Integer = Field(ge=1, le=3, description="1 routine … 3 urgent.")

    @model_validator(mode="after")
    def _window_ordered(self) -> Booking:
        if self.window_end < self.window_start:
            raise PydanticCustomError("invalid_window", "window_end is before window_start")
        return self


class Candidate(_Wire):
    driver_id: Identifier
    lat: FiniteFloat = Field(ge=-90.0, le=90.0)
    lon: FiniteFloat = Field(ge=-180.0, le=180.0)
    available_in_min: FiniteFloat = Field(ge=0.0, le=24 * 60)
    queue_len: Integer = Field(ge=0, le=1_000)
    eligible: bool = True


class Action(_Wire):
    driver_id: Identifier
    policy: str = Field(min_length=1, max_length=64)
    model_version: str | None = Field(None, max_length=64)
    propensity: OptionalFloat | None = Field(None, gt=0.0, le=1.0)

    _propensity_not_bool = field_validator("propensity", mode="before")(_not_a_boolean)


OutcomeStatus = Literal["completed", "late", "cancelled"]


class Outcome(_Wire):
    status: OutcomeStatus
    pickup_delay_min: FiniteFloat = Field(ge=-24 * 60, le=24 * 60)
    empty_km: FiniteFloat = Field(ge=0.0, le=10_000)
    total_km: FiniteFloat = Field(ge=0.0, le=10_000)


class DispatchOutcomeEvent(_Wire):
    """One dispatch decision and what came of it (schema_version 1)."""

    schema_version: Annotated[Literal[1], NoBool]
    event_id: UUID
    company_id: Identifier
    episode_id: Identifier
    step: Integer = Field(ge=0, le=10_000_000)
    decided_at: AwareDatetime
    occurred_at: AwareDatetime
    booking: Booking
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    action: Action
    outcome: Outcome
    reward: OptionalFloat | None = None

    _reward_not_bool = field_validator("reward", mode="before")(_not_a_boolean)

    @field_validator("candidates")
    @classmethod
    def _unique_drivers(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: set[str] = set()
        for candidate in candidates:
            if candidate.driver_id in seen:
                raise PydanticCustomError(
                    "duplicate_candidate",
                    "driver {driver_id} is listed twice",
                    {"driver_id": candidate.driver_id},
                )
            seen.add(candidate.driver_id)
        return candidates

    @model_validator(mode="after")
    def _consistent(self) -> DispatchOutcomeEvent:
        if self.action_index < 0:
            raise PydanticCustomError(
                "action_not_a_candidate",
                "action.driver_id {driver_id} is not among candidates",
                {"driver_id": self.action.driver_id},
            )
        if self.occurred_at < self.decided_at:
            raise PydanticCustomError("occurred_before_decided", "occurred_at is before decided_at")
        return self

    @property
    def action_index(self) -> int:
        """Position of the chosen driver in `candidates`, -1 if absent."""
        for index, candidate in enumerate(self.candidates):
            if candidate.driver_id == self.action.driver_id:
                return index
        return -1


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ModelEventType = Literal["model.promoted", "model.rolled_back", "model.traffic_changed"]
AliasName = Literal["champion", "challenger"]
ALL_COMPANIES = "*"


class PromotionDecision(_Wire):
    """The decision record behind an alias move (DESIGN.md, "Decision record")."""

    verdict: Literal["promote", "reject", "insufficient_evidence"]
    """The record's verdict (a manual override records `promote` with kind `manual`)."""
    record_uri: str
    """`file://…/<version>/decisions/<record_id>.json`: the whole record."""


class Lineage(_Wire):
    """Where the promoted model came from."""

    data_window: tuple[AwareDatetime | None, AwareDatetime | None] | None = None
    """[start, end) of the logged events it learned from; None for simulator-only training."""
    events: int | None = None
    """Logged events (transitions) in that window."""
    parent_version: str | None = None
    """The version it was fine-tuned from or judged against."""
    study: str | None = None
    """The tuning study whose parameters it used."""
    trainer: str
    """`dqn` or `distill`."""


class ModelPromotedEvent(_Wire):
    """Published on `dispatch.models` when an alias moves (DESIGN.md, promotion event v1).

    Key: the alias for scope `*`, `<company_id>/<alias>` otherwise. Consumers
    deduplicate on `event_id` (delivery is at-least-once through the outbox)."""

    schema_version: Literal[1] = 1
    """Version of this event's layout."""
    event_id: UUID
    """Unique per alias move; the deduplication key."""
    event_type: ModelEventType
    """Promoted, rolled back (names the version now serving), or canary share changed."""
    scope: Identifier = ALL_COMPANIES
    """`*` (every company) or one company_id; a company's own alias wins over `*`'s."""
    alias: AliasName
    """Which alias moved."""
    model_version: Identifier
    """The version the alias now points to."""
    previous_version: str | None
    """The version it pointed to before, None for the first move."""
    artifact_uri: str
    """`file://` URI of the safetensors weights."""
    onnx_uri: str | None
    """`file://` URI of the ONNX export serving loads; None if the version has none."""
    card_uri: str
    """`file://` URI of the version's card.json."""
    sha256: Sha256
    """sha256 of the weights file; check before loading."""
    onnx_sha256: Sha256 | None
    """sha256 of the ONNX file; check before loading."""
    featurizer_version: int
    """The featurizer the model expects; a dispatcher computing another one keeps its model."""
    traffic_share: FiniteFloat = Field(ge=0.0, le=1.0)
    """Share of decisions the dispatch system should give this alias."""
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    """Headline figures from the decision record (e.g. sim_reward_delta)."""
    decision: PromotionDecision | None
    """The decision record behind the move; None only when none exists."""
    lineage: Lineage
    """Data window, event count, parent version, study, trainer."""
    actor: Identifier
    """Who moved the alias: `daemon`, or the operator (user@host)."""
    reason: str
    """Why, in one sentence."""
    promoted_at: AwareDatetime
    """When the alias move was committed (UTC)."""

    @property
    def key(self) -> str:
        """The Kafka record key: the alias, prefixed by the company outside scope `*`."""
        return self.alias if self.scope == ALL_COMPANIES else f"{self.scope}/{self.alias}"


def promotion_json_schema() -> dict[str, Any]:
    """The JSON Schema of the promotion event (schema_version 1), as published in docs/schema/."""
    schema = ModelPromotedEvent.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://dispatchloop.dev/schema/model-promoted-v1.json"
    schema["description"] = (
        "An alias move on dispatch.models (schema_version 1). Key: the alias for scope *, "
        "<company_id>/<alias> otherwise. Deduplicate on event_id. Load a version only after "
        "checking sha256, onnx_sha256 and featurizer_version."
    )
    return schema


class DecideRequest(_Wire):
    """`POST /v1/decide` (DESIGN.md, "Serving contract"): a decision to take now.

    The same objects as in the outcome event, so what was decided is what gets logged."""

    decided_at: AwareDatetime
    booking: Booking
    candidates: list[Candidate] = Field(min_length=1, max_length=MAX_CANDIDATES)
    company_id: Identifier | None = None
    """Whose aliases to resolve (its own scope, else `*`); None means scope `*`."""

    @field_validator("candidates")
    @classmethod
    def _drivers_unique_and_one_eligible(cls, candidates: list[Candidate]) -> list[Candidate]:
        if len({c.driver_id for c in candidates}) != len(candidates):
            raise PydanticCustomError("duplicate_candidate", "a driver is listed twice")
        if not any(c.eligible for c in candidates):
            raise PydanticCustomError("no_eligible_candidate", "no candidate is eligible")
        return candidates


class _Record(BaseModel):
    # Records dispatchloop writes itself: an unknown key is a bug or a newer writer, refused.
    model_config = ConfigDict(extra="forbid", frozen=True)


Verdict = Literal["promote", "reject", "insufficient_evidence"]


class GateResult(_Record):
    """One gate of a decision record (DESIGN.md, "Decision record")."""

    name: Identifier
    """`paired_sim`, `guardrail.late_rate`, `ope.snips`, `canary.reward`, ..."""
    passed: bool | None
    """True, False, or None when the gate could not be decided (`detail` says why)."""
    value: FiniteFloat | None = None
    """The gate's statistic (e.g. candidate minus champion mean reward), None if undecided."""
    ci: tuple[FiniteFloat, FiniteFloat] | None = None
    """Confidence interval of `value` at `confidence`, when the statistic has one."""
    confidence: FiniteFloat | None = Field(default=None, gt=0.0, lt=1.0)
    """Confidence level of `ci` (e.g. 0.99)."""
    threshold: FiniteFloat | None = None
    """What `value` (or its bound) is compared with: a margin, a rate limit."""
    detail: str = ""
    """One sentence a person can read: the evidence, or why the gate is undecided."""


class ScenarioRef(_Record):
    """Which simulated world judged the candidate."""

    fingerprint: str
    """Hash of the scenario's parameters (same fingerprint, same world)."""
    window: tuple[AwareDatetime, AwareDatetime] | None = None
    """The store window the scenario was fitted from; None for the built-in default world."""


class DecisionRecord(_Record):
    """Every judgement of a candidate, whatever its verdict (DESIGN.md, "Decision record").

    Written by the gate (and the canary), stored with the version by the
    registry, linked from the promotion event."""

    record_id: Identifier
    """Unique id of this record (a UUID string)."""
    candidate: Identifier
    """The version (or model directory name) being judged."""
    champion: str | None
    """The version it was judged against; `greedy` for the heuristic, None if nothing serves."""
    verdict: Verdict
    """`promote` only if every gate passed; `reject` if any failed; else insufficient evidence."""
    gates: tuple[GateResult, ...]
    """Every gate, in the order evaluated."""
    reasons: tuple[str, ...] = ()
    """One sentence per failed or undecided gate (all gates passed: one sentence saying so)."""
    scenario: ScenarioRef | None = None
    """The simulated world of the paired test; None when no simulator was used (canary)."""
    seeds: Literal["TEST", "VALIDATION", "none"] = "TEST"
    """Which seed split the simulator episodes came from (TEST is never used for selection)."""
    metrics: dict[str, FiniteFloat] = Field(default_factory=dict)
    """Headline figures copied into the promotion event (e.g. `sim_reward_delta`)."""
    kind: Literal["gate", "canary", "manual"] = "gate"
    """What produced the record: the promotion gate, a canary judgement, or an operator."""
    created_at: AwareDatetime
    """When the judgement was made (UTC)."""


class EventKeys(Protocol):
    """What the replay store indexes an event by (besides its raw bytes).

    A `DispatchOutcomeEvent` has them; so does the ingest loop's cheaper
    `screening.ScreenedEvent`, which never builds the whole model.
    """

    @property
    def event_id(self) -> UUID: ...

    @property
    def episode_id(self) -> str: ...

    @property
    def step(self) -> int: ...

    @property
    def decided_at(self) -> datetime: ...


class Rejection(NamedTuple):
    """Why a record is a dead letter: `reason` is a short code, `detail` a sentence."""

    reason: str
    detail: str


# Reason codes of the dead-letter topic's `dlq.reason` header.
REASON_TOO_LARGE = "too_large"
REASON_NOT_UTF8 = "not_utf8"
REASON_INVALID_JSON = "invalid_json"
REASON_UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
REASON_INVALID_FIELD = "invalid_field"
REASON_NO_VALUE = "no_value"
REASON_DUPLICATE_KEY = "duplicate_key"
REASON_TOO_DEEP = "too_deep"
REASON_UNSTORABLE_TEXT = "unstorable_text"
# Given by the ingest loop, not by parsing: an exception while handling the record
# (`dlq.detail` names its class), and a row the store refused (ditto).
REASON_UNPROCESSABLE = "unprocessable"
REASON_UNSTORABLE = "unstorable"

_CUSTOM_REASONS = frozenset(
    {
        "implausible_coordinates",
        "invalid_window",
        "duplicate_candidate",
        "action_not_a_candidate",
        "occurred_before_decided",
    }
)


def outcome_json_schema() -> dict[str, Any]:
    """The JSON Schema of schema_version 1, as published in docs/schema/.

    Cross-field rules (action among candidates, unique drivers, window order,
    occurred after decided, no (0, 0) position) cannot be said in JSON Schema;
    the description lists them so producers know they are enforced.
    """
    schema = DispatchOutcomeEvent.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://dispatchloop.dev/schema/dispatch-outcome-v1.json"
    schema["description"] = (
        "One dispatch decision and what came of it (schema_version 1). Also enforced: "
        "action.driver_id is one of candidates; candidate driver_ids are unique; "
        "booking.window_end >= window_start; occurred_at >= decided_at; "
        "positions are not (0, 0); timestamps carry a zone. Unknown fields are allowed."
    )
    return schema


def parse_outcome(raw: bytes | None, max_bytes: int) -> DispatchOutcomeEvent | Rejection:
    """Validate one record's value; never raises for bad input."""
    if raw is None:
        return Rejection(REASON_NO_VALUE, "record has no value (tombstone)")
    if len(raw) > max_bytes:
        return Rejection(REASON_TOO_LARGE, f"{len(raw)} bytes exceed the limit of {max_bytes}")
    refused = document_rejection(raw)
    if refused is not None:
        return refused
    try:
        return DispatchOutcomeEvent.model_validate_json(raw)
    except ValidationError as exc:
        return _rejection_from(exc, raw)


_JSON = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
_UNDECODED: Any = object()


def document_rejection(raw: bytes, document: Any = _UNDECODED) -> Rejection | None:
    """Duplicate keys, excessive nesting or unstorable text anywhere in the document.

    None also for bytes that are not JSON at all: the models give those their reason.
    Screening passes the `document` it decoded (msgspec, plain dicts) so both paths run
    this same function. Cheap when nothing is wrong: without a backslash in the bytes
    there is no escape (so no U+0000, no surrogate, no quote inside a string), every `"`
    opens or closes a key or a string value, and re-encoding the decoded document gives
    the same bytes (compact producers), or at least as many quotes, exactly when no
    duplicate key was dropped. Anything else, and whatever msgspec cannot decode, gets
    the exact check with Python's json parser.
    """
    if document is _UNDECODED:
        try:
            document = _JSON.decode(raw)
        except RecursionError:
            return _too_deep()
        except msgspec.DecodeError:  # e.g. NaN, which pydantic reads: the exact check decides
            return _exact_document_rejection(raw)
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH and _too_deep_to_walk(document):
        return _too_deep()
    if b"\\" in raw:
        return _exact_document_rejection(raw)
    again = _ENCODER.encode(document)
    if again != raw and raw.count(b'"') != again.count(b'"'):
        return _exact_document_rejection(raw)
    return None


def _exact_document_rejection(raw: bytes) -> Rejection | None:
    """The same verdict as document_rejection, the slow way (json, a walk of the strings)."""
    try:
        text = raw.decode("utf-8")
        document = json.loads(text, object_pairs_hook=_pairs_without_duplicates)
    except _DuplicateKeyError as exc:
        return Rejection(REASON_DUPLICATE_KEY, f"key {exc.key!r} appears twice in one object")
    except RecursionError:
        return _too_deep()
    except ValueError:  # not UTF-8 or not JSON: the models say why
        return None
    if _too_deep_to_walk(document):
        return _too_deep()
    bad = _first_unstorable_string(document) if "\\u" in text else None
    if bad is not None:
        return Rejection(REASON_UNSTORABLE_TEXT, f"a string holds {bad} (not storable as text)")
    return None


def _too_deep() -> Rejection:
    return Rejection(REASON_TOO_DEEP, f"nesting deeper than {MAX_JSON_DEPTH} levels")


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return document


def _too_deep_to_walk(document: Any) -> bool:
    try:
        return _depth(document) > MAX_JSON_DEPTH
    except RecursionError:  # far deeper than the limit
        return True


def _depth(node: Any) -> int:
    """Levels of objects/arrays (a scalar: 0, `{}`: 1)."""
    kind = type(node)
    if kind is dict:
        children: Any = node.values()
    elif kind is list:
        children = node
    else:
        return 0
    return 1 + max((_depth(child) for child in children), default=0)


def _first_unstorable_string(root: Any) -> str | None:
    """'U+0000' or 'an unpaired surrogate' for the first such string (keys included)."""
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            problem = unstorable_in(item)
            if problem is not None:
                return problem
    return None


def unstorable_in(text: str) -> str | None:
    """Why a string cannot be stored as text, or None."""
    if "\x00" in text:
        return "U+0000"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "an unpaired surrogate"
    return None


def _rejection_from(exc: ValidationError, raw: bytes) -> Rejection:
    error = exc.errors(include_url=False)[0]
    kind, location = error["type"], ".".join(str(p) for p in error["loc"])
    detail = f"{location}: {error['msg']}" if location else error["msg"]
    if kind == "json_invalid":
        if not _is_utf8(raw):
            return Rejection(REASON_NOT_UTF8, "value is not UTF-8")
        return Rejection(REASON_INVALID_JSON, detail)
    if kind in ("model_type", "model_attributes_type") and not location:
        return Rejection(REASON_INVALID_JSON, "value is not a JSON object")
    if error["loc"][:1] == ("schema_version",):
        return Rejection(REASON_UNKNOWN_SCHEMA_VERSION, f"schema_version {_input_text(error)}")
    if kind in _CUSTOM_REASONS:
        return Rejection(kind, detail)
    return Rejection(REASON_INVALID_FIELD, detail)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _input_text(error: Any) -> str:
    value = error.get("input")
    return "is missing" if error["type"] == "missing" else f"{value!r} is not supported"
