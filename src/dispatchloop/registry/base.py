"""The model registry contract. Every backend implements `ModelRegistry`; one contract
test suite (tests/integration/test_registry_contract.py) runs it on SQLite and PostgreSQL.

Contract:
- `register(model_dir)` copies the directory's model files into the registry under a
  new version (`v1`, `v2`, ...), after checking every file against the card's
  sha256; a directory whose files fail the check is refused (`VersionIntegrityError`).
  Registering the same files again (same content hash) returns the existing version.
  A version's files never change afterwards (they are made read-only); only its
  `decisions/` folder grows (append-only, not part of the hashed files).
- Files are written to a staging directory, fsynced, and renamed into place (the
  directory fsynced after the rename) before the version's row commits: a version
  that can be read is complete; a crash leaves at most an unreferenced directory,
  which the next `register` moves aside.
- `get(ref)` returns a version by name or through an alias; an alias resolves in the
  company's own scope first, then in `*`. `verify(version)` re-hashes every file
  against the hashes recorded at registration and checks the featurizer version;
  a tampered or half-written version raises `VersionIntegrityError` and is never
  served. Files that could hold a pickle (`.pt`, `.pkl`, ...) are never loaded; they
  are reported in `VerifyReport.stray_files` and counted.
- `set_alias(alias, version, expected_previous=...)` is a compare-and-swap inside one
  transaction (PostgreSQL: the alias row is locked `FOR UPDATE` and updated on its
  generation; SQLite: `BEGIN IMMEDIATE`): if the alias does not point to
  `expected_previous` when the transaction runs, nothing changes and
  `AliasConflictError` is raised. Of two concurrent moves with the same
  `expected_previous`, exactly one wins.
- Every alias move appends one history row (who, when, from, to, reason, decision
  record id, override flag) and one outbox row holding the validated promotion
  event, in the same transaction as the alias update: all three are present or none.
  History is append-only (the database refuses UPDATE and DELETE on it).
- `promote` refuses a version that fails `verify`, and a version without a passing
  decision record (verdict `promote` for that version) unless `force=True` with a
  reason: the override is recorded as a `manual` decision record and flagged in the
  history.
- `rollback(alias)` moves the alias back to the version it served before the current
  one: history is read as a stack (a promotion pushes, a rollback pops), so two
  rollbacks after three promotions land on the first version.
- Outbox rows stay pending until `mark_published` (called by `OutboxPublisher` only
  after the broker acknowledged them with acks=all): at-least-once, never lost,
  deduplicable by `event_id`.
- Methods may be called from one thread at a time per instance; any number of
  processes may share one database and root.
"""

from __future__ import annotations

import abc
import os
import signal
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from dispatchloop.errors import InputError, TransientError
from dispatchloop.events import (
    ALL_COMPANIES,
    AliasName,
    DecisionRecord,
    ModelEventType,
    ModelPromotedEvent,
)
from dispatchloop.rl.card import CARD_FILE, ModelCard

DECISIONS_DIR = "decisions"
Checkpoint = Callable[[str], None]
"""A named point in a registry operation; crash tests inject one that kills the process."""
Clock = Callable[[], datetime]


def no_checkpoint(name: str) -> None:
    """The default checkpoint: nothing happens."""


CRASH_ENV = "DISPATCHLOOP_TEST_CRASH_AT"
"""Tests only: `name[:n]` makes the process SIGKILL itself the n-th time it passes checkpoint
`name` (registry `register.*`, `move.*`, `publish.*`; the loop's `cycle.<stage>`). Read by the
entry points (`models`, `run`), never by the library."""


def crash_checkpoint(spec: str | None) -> Checkpoint:
    """The test-only crash hook for `CRASH_ENV`'s value: SIGKILL at the n-th pass of `name`.

    No spec (production): `no_checkpoint`."""
    if not spec:
        return no_checkpoint
    name, _, nth = spec.partition(":")
    remaining = [int(nth or 1)]

    def checkpoint(passed: str) -> None:
        if passed != name:
            return
        remaining[0] -= 1
        if remaining[0] == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


class VersionNotFoundError(InputError):
    """No version (or alias) by that name."""


class VersionIntegrityError(InputError):
    """A model's files do not match the hashes recorded for them (tampered, half-written),
    or its featurizer version is not the one this code computes."""


class NoPassingDecisionError(InputError):
    """`promote` without a decision record whose verdict is `promote` (and without --force)."""


class NothingToRollBackError(InputError):
    """The alias has no earlier version to go back to."""


class AliasUnchangedError(InputError):
    """The alias already points to that version with that traffic share."""


class AliasConflictError(TransientError):
    """Compare-and-swap failed: the alias no longer points to `expected_previous`
    (another process moved it; a stale leader must re-read before acting)."""


class RegistryUnavailableError(TransientError):
    """The registry's database or files cannot be reached or written now."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelVersion(_Record):
    """One immutable registered version."""

    version: str
    """`v<seq>`: assigned at registration, never reused."""
    seq: int
    """The version's number (registration order)."""
    content_sha256: str
    """Hash over every model file's name and sha256: equal content, equal version."""
    card: ModelCard
    """The card as recorded at registration (its `version` is this version)."""
    directory: Path
    """Where the files live: `<root>/<version>`."""
    registered_at: AwareDatetime
    """When the version's row committed (UTC)."""
    registered_by: str
    """Who registered it (`daemon`, or user@host)."""

    @property
    def weights_path(self) -> Path:
        """The safetensors weights."""
        return self.directory / self.card.weights_file

    @property
    def onnx_path(self) -> Path | None:
        """The ONNX export, None when the version has none."""
        return None if self.card.onnx_file is None else self.directory / self.card.onnx_file

    @property
    def card_path(self) -> Path:
        """The card file."""
        return self.directory / CARD_FILE


class AliasState(_Record):
    """Where one alias of one scope points now."""

    scope: str
    """`*` or a company_id."""
    alias: AliasName
    """`champion` or `challenger`."""
    version: str
    """The version it points to."""
    traffic_share: float
    """Share of decisions the dispatch system should give it."""
    generation: int
    """Number of moves so far (the compare-and-swap counter)."""
    updated_at: AwareDatetime
    """When it last moved."""


class HistoryEntry(_Record):
    """One alias move, as appended to the history (never changed afterwards)."""

    id: int
    """Position in the history (increasing)."""
    scope: str
    """`*` or a company_id."""
    alias: AliasName
    """Which alias moved."""
    event_type: ModelEventType
    """`model.promoted`, `model.rolled_back` or `model.traffic_changed`."""
    from_version: str | None
    """Where it pointed before (None: first move)."""
    to_version: str
    """Where it points after the move."""
    traffic_share: float
    """Share of decisions after the move."""
    actor: str
    """Who moved it."""
    reason: str
    """Why."""
    decision_record_id: str | None
    """The decision record behind the move."""
    override: bool
    """True when an operator forced a promotion without a passing decision record."""
    event_id: str
    """The promotion event's id (its outbox row and Kafka record carry the same)."""
    at: AwareDatetime
    """When the move committed."""


class AliasMove(_Record):
    """What an alias move did: the history row and the event queued for publication."""

    entry: HistoryEntry
    """The appended history row."""
    event: ModelPromotedEvent
    """The promotion event written to the outbox in the same transaction."""


class AliasChange(_Record):
    """One move of an atomic `set_aliases` call (always compare-and-swap)."""

    alias: AliasName
    """`champion` or `challenger`."""
    version: str
    """The version the alias is to serve (`v7`)."""
    expected_previous: str | None
    """The version the alias must serve now (None: never set), or nothing moves."""
    traffic_share: float | None = None
    """The share to serve at (None: as `set_alias` defaults it)."""
    event_type: ModelEventType | None = None
    """The event published for this move (None: as `set_alias` derives it)."""


class VerifyReport(_Record):
    """A successful verification (failures raise `VersionIntegrityError`)."""

    version: str
    """The version checked."""
    files: dict[str, str] = Field(default_factory=dict)
    """Every model file and its (re-computed, matching) sha256."""
    stray_files: tuple[str, ...] = ()
    """Files that could hold a pickle found in the version directory: ignored, reported."""


class OutboxRow(_Record):
    """One promotion event waiting to be (or already) published."""

    id: int
    """Position in the outbox (publication order)."""
    event_id: str
    """The event's id."""
    key: str
    """The Kafka record key (`champion`, or `<company_id>/champion`)."""
    payload: str
    """The event as JSON (validated against ModelPromotedEvent when written)."""
    attempts: int
    """Failed publication attempts so far."""
    published_at: AwareDatetime | None
    """When the broker acknowledged it, None while pending."""


class Unset:
    """Marker: `expected_previous` not given (no compare, the move is still locked)."""


UNSET = Unset()
Actor = str


class ModelRegistry(abc.ABC):
    """Immutable model versions, scoped aliases with history, and the promotion outbox."""

    root: Path

    @abc.abstractmethod
    def register(self, model_dir: Path, *, actor: Actor) -> ModelVersion:
        """Copy a verified model directory in as a new version (or return the same content's)."""

    @abc.abstractmethod
    def get(self, ref: str, *, company: str | None = None) -> ModelVersion:
        """A version by name (`v3`) or alias (`champion`, resolved for `company`)."""

    @abc.abstractmethod
    def list_versions(self) -> list[ModelVersion]:
        """Every version, oldest first."""

    @abc.abstractmethod
    def verify(self, version: str) -> VerifyReport:
        """Re-hash the version's files and check its featurizer; raise if anything is off."""

    @abc.abstractmethod
    def attach_decision(self, version: str, record: DecisionRecord) -> str:
        """Store a decision record with a version (row + `decisions/<id>.json`); return its URI."""

    @abc.abstractmethod
    def decisions(self, version: str) -> list[DecisionRecord]:
        """The version's decision records, oldest first."""

    @abc.abstractmethod
    def alias(self, alias: AliasName, *, scope: str = ALL_COMPANIES) -> AliasState | None:
        """The alias of exactly this scope (no fallback to `*`), None if never set."""

    @abc.abstractmethod
    def resolve(self, alias: AliasName, *, company: str | None = None) -> AliasState | None:
        """The alias a company is served: its own scope's, else `*`'s."""

    @abc.abstractmethod
    def aliases(self, scope: str | None = None) -> list[AliasState]:
        """Every set alias (of one scope when given)."""

    @abc.abstractmethod
    def set_alias(
        self,
        alias: AliasName,
        version: str,
        *,
        actor: Actor,
        reason: str,
        scope: str = ALL_COMPANIES,
        expected_previous: str | Unset | None = UNSET,
        decision_record_id: str | None = None,
        traffic_share: float | None = None,
        event_type: ModelEventType | None = None,
        override: bool = False,
    ) -> AliasMove:
        """Move an alias (compare-and-swap on `expected_previous`), append history and outbox."""

    @abc.abstractmethod
    def set_aliases(
        self,
        changes: Sequence[AliasChange],
        *,
        actor: Actor,
        reason: str,
        scope: str = ALL_COMPANIES,
        decision_record_id: str | None = None,
    ) -> list[AliasMove]:
        """Several alias moves as one: each compare-and-swap with its history and outbox
        rows, all in one transaction, so all happen or none does (a canary's promotion
        moves champion and challenger together). Events are queued in `changes` order;
        an alias may appear once."""

    @abc.abstractmethod
    def promote(
        self,
        version: str,
        *,
        actor: Actor,
        reason: str,
        alias: AliasName = "champion",
        scope: str = ALL_COMPANIES,
        traffic_share: float | None = None,
        force: bool = False,
        expected_previous: str | Unset | None = UNSET,
    ) -> AliasMove:
        """Verify, require a passing decision record (or `force`), then `set_alias`."""

    @abc.abstractmethod
    def rollback(
        self,
        alias: AliasName = "champion",
        *,
        actor: Actor,
        reason: str,
        scope: str = ALL_COMPANIES,
        decision_record_id: str | None = None,
        expected_current: str | Unset | None = UNSET,
    ) -> AliasMove:
        """Move the alias back to the version it served before the current one
        (`expected_current` fences a stale caller: conflict if the alias moved since)."""

    @abc.abstractmethod
    def history(
        self, alias: AliasName | None = None, *, scope: str | None = ALL_COMPANIES
    ) -> list[HistoryEntry]:
        """Alias moves, oldest first (one alias or all; one scope or, with None, all)."""

    def serving_at(
        self, alias: AliasName, at: datetime, *, company: str | None = None
    ) -> HistoryEntry | None:
        """The move that set what `alias` served `company` at `at` (its scope, else `*`):
        "which model was serving last Tuesday at 08:00, and why?" None if nothing was set."""
        scopes = [company] if company not in (None, ALL_COMPANIES) else []
        for scope in [*scopes, ALL_COMPANIES]:
            earlier = [entry for entry in self.history(alias, scope=scope) if entry.at <= at]
            if earlier:
                return earlier[-1]
        return None

    @abc.abstractmethod
    def pending_outbox(self, limit: int = 100) -> list[OutboxRow]:
        """Unpublished outbox rows in publication order."""

    @abc.abstractmethod
    def outbox_backlog(self) -> int:
        """How many outbox rows are not yet published."""

    @abc.abstractmethod
    def outbox(self) -> list[OutboxRow]:
        """Every outbox row (published or not), in order."""

    @abc.abstractmethod
    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        """Record that the broker acknowledged these rows."""

    @abc.abstractmethod
    def record_publish_failure(self, ids: Sequence[int], error: str) -> None:
        """Count a failed attempt on these rows (they stay pending)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
