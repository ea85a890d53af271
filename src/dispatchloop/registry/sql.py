"""`SqlRegistry`: the registry contract (registry/base.py) on SQLAlchemy Core, for
SQLite and PostgreSQL alike, in the replay store's database.

Write transactions take the database's lock first (SQLite `BEGIN IMMEDIATE`, so a
read-then-write never dies on a lock upgrade; PostgreSQL `SELECT … FOR UPDATE` on
the alias row, or an advisory lock to number versions), then compare, then write:
the compare-and-swap is honoured inside the transaction, which is what fences a
stale daemon leader. Every alias move writes alias, history and outbox in one
transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dispatchloop.errors import InputError
from dispatchloop.events import (
    ALL_COMPANIES,
    AliasName,
    DecisionRecord,
    Lineage,
    ModelEventType,
    ModelPromotedEvent,
    PromotionDecision,
)
from dispatchloop.registry import files
from dispatchloop.registry import schema as t
from dispatchloop.registry.base import (
    UNSET,
    AliasChange,
    AliasConflictError,
    AliasMove,
    AliasState,
    AliasUnchangedError,
    Checkpoint,
    Clock,
    HistoryEntry,
    ModelRegistry,
    ModelVersion,
    NoPassingDecisionError,
    NothingToRollBackError,
    OutboxRow,
    RegistryUnavailableError,
    Unset,
    VerifyReport,
    VersionIntegrityError,
    VersionNotFoundError,
    no_checkpoint,
)
from dispatchloop.registry.metrics import RegistryMetrics
from dispatchloop.replay.engine import open_engine
from dispatchloop.replay.schema import from_epoch_us, to_epoch_us
from dispatchloop.rl.card import CardError, ModelCard, read_card

logger = logging.getLogger(__name__)

_PG_REGISTER_LOCK = 0x64_6C_72_65_67_69_73_74  # "dlregist": serialises version numbering
ALIASES: tuple[AliasName, ...] = ("champion", "challenger")


def _now() -> datetime:
    return datetime.now(UTC)


class SqlRegistry(ModelRegistry):
    """The registry on one SQLAlchemy engine and one artifact root."""

    def __init__(
        self,
        engine: sa.Engine,
        root: Path,
        *,
        clock: Clock = _now,
        checkpoint: Checkpoint = no_checkpoint,
        metrics: RegistryMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.root = Path(root).resolve()
        self._clock = clock
        self._checkpoint = checkpoint
        self.metrics = metrics or RegistryMetrics()
        self.root.mkdir(parents=True, exist_ok=True)

    # --- transactions --------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One write transaction holding the database's writer lock (SQLite) from the start."""
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                yield conn
        except sa.exc.OperationalError as exc:  # locked, unreachable, disk full
            self.metrics.errors.labels("database").inc()
            raise RegistryUnavailableError(f"registry database: {_first_line(exc)}") from exc

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.OperationalError as exc:
            self.metrics.errors.labels("database").inc()
            raise RegistryUnavailableError(f"registry database: {_first_line(exc)}") from exc

    # --- versions ------------------------------------------------------------------

    def register(self, model_dir: Path, *, actor: str) -> ModelVersion:
        source = Path(model_dir)
        card = self._source_card(source)
        existing = self._by_content(card.content_sha256)
        if existing is not None:
            return existing
        files.sweep_staging(self.root)
        staging = files.stage_copy(self.root, source, card)
        self._checkpoint("register.staged")
        try:
            return self._install(staging, card, actor)
        finally:
            files.discard(staging)

    def _source_card(self, source: Path) -> ModelCard:
        try:
            card = read_card(source)
        except CardError as exc:
            raise InputError(f"cannot register {source}: {exc}") from exc
        try:
            files.check_files(source, card.files, f"model directory {source}")
            files.check_featurizer(card, f"model directory {source}")
        except VersionIntegrityError:
            self.metrics.errors.labels("integrity").inc()
            raise
        self._count_strays(files.report_strays(source, card))
        return card

    def _install(self, staging: Path, card: ModelCard, actor: str) -> ModelVersion:
        with self._write() as conn:
            self._lock_numbering(conn)
            existing = self._by_content(card.content_sha256, conn)
            if existing is not None:  # registered by another process meanwhile
                return existing
            seq = int(conn.execute(sa.select(sa.func.max(t.versions.c.seq))).scalar() or 0) + 1
            version = f"v{seq}"
            card = card.model_copy(update={"version": version})
            files.install(self.root, staging, version, card)
            self._checkpoint("register.renamed")
            now = self._clock()
            conn.execute(
                t.versions.insert().values(_version_values(seq, version, card, now, actor))
            )
            self._checkpoint("register.inserted")
        self._checkpoint("register.committed")
        return self.get(version)

    def _lock_numbering(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_REGISTER_LOCK})

    def _by_content(
        self, content_sha256: str, conn: sa.Connection | None = None
    ) -> ModelVersion | None:
        query = sa.select(t.versions).where(t.versions.c.content_sha256 == content_sha256)
        if conn is not None:
            row = conn.execute(query).mappings().first()
        else:
            with self._read() as reader:
                row = reader.execute(query).mappings().first()
        return None if row is None else self._version_of(row)

    def _version_of(self, row: Any) -> ModelVersion:
        return ModelVersion(
            version=row["version"],
            seq=row["seq"],
            content_sha256=row["content_sha256"],
            card=ModelCard.model_validate_json(row["card_json"]),
            directory=self.root / row["version"],
            registered_at=from_epoch_us(row["registered_at_us"]),
            registered_by=row["registered_by"],
        )

    def get(self, ref: str, *, company: str | None = None) -> ModelVersion:
        if ref in ALIASES:
            state = self.resolve(ref, company=company)
            if state is None:
                where = "" if company is None else f" for company {company}"
                raise VersionNotFoundError(f"no {ref} is set{where}")
            ref = state.version
        with self._read() as conn:
            row = (
                conn.execute(sa.select(t.versions).where(t.versions.c.version == ref))
                .mappings()
                .first()
            )
        if row is None:
            raise VersionNotFoundError(f"there is no version {ref!r} in the registry")
        return self._version_of(row)

    def list_versions(self) -> list[ModelVersion]:
        with self._read() as conn:
            rows = conn.execute(sa.select(t.versions).order_by(t.versions.c.seq)).mappings()
            return [self._version_of(row) for row in rows]

    def verify(self, version: str) -> VerifyReport:
        found = self.get(version)
        what = f"version {found.version}"
        try:
            checked = files.check_files(found.directory, found.card.files, what)
            on_disk = read_card(found.directory)
            if on_disk.files != found.card.files or on_disk.version != found.version:
                raise VersionIntegrityError(f"{what}: card.json differs from the registered card")
            files.check_featurizer(found.card, what)
        except CardError as exc:
            self.metrics.errors.labels("integrity").inc()
            raise VersionIntegrityError(f"{what}: {exc}") from exc
        except VersionIntegrityError:
            self.metrics.errors.labels("integrity").inc()
            raise
        strays = files.report_strays(found.directory, found.card)
        self._count_strays(strays)
        return VerifyReport(version=found.version, files=checked, stray_files=strays)

    def _count_strays(self, strays: Sequence[str]) -> None:
        if strays:
            self.metrics.errors.labels("stray_file").inc(len(strays))

    # --- decision records ----------------------------------------------------------

    def attach_decision(self, version: str, record: DecisionRecord) -> str:
        self.get(version)
        path = files.write_decision(self.root, version, record)
        with self._write() as conn:
            self._insert_decision(conn, version, record)
        return path.as_uri()

    def _insert_decision(self, conn: sa.Connection, version: str, record: DecisionRecord) -> None:
        exists = conn.execute(
            sa.select(t.decisions.c.record_id).where(t.decisions.c.record_id == record.record_id)
        ).first()
        if exists is not None:
            return
        conn.execute(
            t.decisions.insert().values(
                record_id=record.record_id,
                version=version,
                verdict=record.verdict,
                kind=record.kind,
                record_json=record.model_dump_json(),
                created_at_us=to_epoch_us(record.created_at),
            )
        )

    def decisions(self, version: str) -> list[DecisionRecord]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(t.decisions.c.record_json)
                .where(t.decisions.c.version == version)
                .order_by(t.decisions.c.created_at_us, t.decisions.c.record_id)
            ).scalars()
            return [DecisionRecord.model_validate_json(raw) for raw in rows]

    def _decision(self, record_id: str) -> tuple[str, DecisionRecord]:
        with self._read() as conn:
            row = conn.execute(
                sa.select(t.decisions.c.version, t.decisions.c.record_json).where(
                    t.decisions.c.record_id == record_id
                )
            ).first()
        if row is None:
            raise InputError(f"there is no decision record {record_id!r}")
        return row[0], DecisionRecord.model_validate_json(row[1])

    # --- aliases -------------------------------------------------------------------

    def alias(self, alias: AliasName, *, scope: str = ALL_COMPANIES) -> AliasState | None:
        with self._read() as conn:
            return self._alias_row(conn, scope, alias, lock=False)

    def _alias_row(
        self, conn: sa.Connection, scope: str, alias: str, *, lock: bool
    ) -> AliasState | None:
        query = sa.select(t.aliases).where(t.aliases.c.scope == scope, t.aliases.c.alias == alias)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        return None if row is None else _alias_state(row)

    def resolve(self, alias: AliasName, *, company: str | None = None) -> AliasState | None:
        if company is not None and company != ALL_COMPANIES:
            own = self.alias(alias, scope=company)
            if own is not None:
                return own
        return self.alias(alias, scope=ALL_COMPANIES)

    def aliases(self, scope: str | None = None) -> list[AliasState]:
        query = sa.select(t.aliases).order_by(t.aliases.c.scope, t.aliases.c.alias)
        if scope is not None:
            query = query.where(t.aliases.c.scope == scope)
        with self._read() as conn:
            return [_alias_state(row) for row in conn.execute(query).mappings()]

    def set_alias(
        self,
        alias: AliasName,
        version: str,
        *,
        actor: str,
        reason: str,
        scope: str = ALL_COMPANIES,
        expected_previous: str | Unset | None = UNSET,
        decision_record_id: str | None = None,
        traffic_share: float | None = None,
        event_type: ModelEventType | None = None,
        override: bool = False,
        manual_record: DecisionRecord | None = None,
    ) -> AliasMove:
        target = self.get(version)
        record = self._record_for(decision_record_id, manual_record)
        move = _MoveRequest(
            scope=scope, alias=alias, target=target, actor=actor, reason=reason,
            expected_previous=expected_previous, record=record, traffic_share=traffic_share,
            event_type=event_type, override=override, manual=manual_record,
        )  # fmt: skip
        return self._move(move)

    def promote(
        self,
        version: str,
        *,
        actor: str,
        reason: str,
        alias: AliasName = "champion",
        scope: str = ALL_COMPANIES,
        traffic_share: float | None = None,
        force: bool = False,
        expected_previous: str | Unset | None = UNSET,
    ) -> AliasMove:
        target = self.get(version)
        self.verify(target.version)
        self._checkpoint("promote.verified")
        passing = [r for r in self.decisions(target.version) if r.verdict == "promote"]
        manual = None
        if passing:
            record_id = passing[-1].record_id
        elif force:
            if not reason.strip():
                raise InputError("a forced promotion needs a reason")
            current = self.alias(alias, scope=scope)
            manual = _manual_record(target.version, current, "promote", reason, self._clock())
            record_id = manual.record_id
        else:
            raise NoPassingDecisionError(
                f"version {target.version} has no decision record with verdict promote "
                "(judge it first, or use --force --reason TEXT)"
            )
        return self.set_alias(
            alias, target.version, actor=actor, reason=reason, scope=scope,
            expected_previous=expected_previous, decision_record_id=record_id,
            traffic_share=traffic_share, override=force and not passing, manual_record=manual,
        )  # fmt: skip

    def rollback(
        self,
        alias: AliasName = "champion",
        *,
        actor: str,
        reason: str,
        scope: str = ALL_COMPANIES,
        decision_record_id: str | None = None,
        expected_current: str | Unset | None = UNSET,
    ) -> AliasMove:
        current = self.alias(alias, scope=scope)
        now_serving = None if current is None else current.version
        if not isinstance(expected_current, Unset) and expected_current != now_serving:
            self.metrics.errors.labels("conflict").inc()
            raise AliasConflictError(
                f"{alias} of scope {scope} points to {now_serving}, not {expected_current}"
            )
        target = _rollback_target(self.history(alias, scope=scope), current)
        if current is None or target is None:
            raise NothingToRollBackError(
                f"{alias} of scope {scope} has no earlier version to roll back to"
            )
        manual = None
        if decision_record_id is None:
            manual = _manual_record(current.version, current, "reject", reason, self._clock())
            manual = manual.model_copy(update={"champion": target})
        return self.set_alias(
            alias, target, actor=actor, reason=reason, scope=scope,
            expected_previous=current.version, decision_record_id=decision_record_id,
            event_type="model.rolled_back", manual_record=manual,
        )  # fmt: skip

    def _record_for(
        self, record_id: str | None, manual: DecisionRecord | None
    ) -> tuple[str, DecisionRecord] | None:
        if manual is not None:  # owned by the version it judges (rollback: the one left)
            return manual.candidate, manual
        if record_id is None:
            return None
        return self._decision(record_id)

    def set_aliases(
        self,
        changes: Sequence[AliasChange],
        *,
        actor: str,
        reason: str,
        scope: str = ALL_COMPANIES,
        decision_record_id: str | None = None,
    ) -> list[AliasMove]:
        aliases = [change.alias for change in changes]
        if not aliases:
            raise InputError("set_aliases needs at least one change")
        if len(set(aliases)) != len(aliases):
            raise InputError(f"set_aliases moves each alias at most once, got {aliases}")
        record = self._record_for(decision_record_id, None)
        moves = [
            _MoveRequest(
                scope=scope,
                alias=change.alias,
                target=self.get(change.version),
                actor=actor,
                reason=reason,
                expected_previous=change.expected_previous,
                record=record,
                traffic_share=change.traffic_share,
                event_type=change.event_type,
                override=False,
                manual=None,
            )
            for change in changes
        ]
        return self._commit(moves)

    def _move(self, move: _MoveRequest) -> AliasMove:
        if move.manual is not None:
            files.write_decision(self.root, move.manual.candidate, move.manual)
        return self._commit([move])[0]

    def _commit(self, moves: list[_MoveRequest]) -> list[AliasMove]:
        """The moves in one write transaction: a conflict on any leaves every alias as it was."""
        try:
            with self._write() as conn:
                done = [self._move_in(conn, move) for move in moves]
        except sa.exc.IntegrityError as exc:  # PostgreSQL: a concurrent first move won
            self.metrics.errors.labels("conflict").inc()
            names = " and ".join(move.alias for move in moves)
            raise AliasConflictError(
                f"{names} of scope {moves[0].scope} was set concurrently; re-read and retry"
            ) from exc
        self._checkpoint("move.committed")
        for entry, _ in done:
            self._count_move(entry)
        return [AliasMove(entry=entry, event=event) for entry, event in done]

    def _move_in(
        self, conn: sa.Connection, move: _MoveRequest
    ) -> tuple[HistoryEntry, ModelPromotedEvent]:
        current = self._alias_row(conn, move.scope, move.alias, lock=True)
        previous = None if current is None else current.version
        if not isinstance(move.expected_previous, Unset) and move.expected_previous != previous:
            self.metrics.errors.labels("conflict").inc()
            raise AliasConflictError(
                f"{move.alias} of scope {move.scope} points to {previous}, "
                f"not {move.expected_previous}: it was moved by someone else"
            )
        share = move.traffic_share
        if share is None:
            share = self._default_share(conn, move, current)
        event_type = move.event_type or (
            "model.traffic_changed" if previous == move.target.version else "model.promoted"
        )
        unchanged = current is not None and abs(current.traffic_share - share) < 1e-12
        if previous == move.target.version and unchanged:
            raise AliasUnchangedError(
                f"{move.alias} of scope {move.scope} already is {previous} at share {share:g}"
            )
        now = self._clock()
        event = self._event(move, previous, share, event_type, now)
        self._checkpoint("move.locked")
        if move.manual is not None:
            self._insert_decision(conn, move.manual.candidate, move.manual)
        self._write_alias(conn, move, current, share, now)
        self._checkpoint("move.alias_written")
        entry = self._append_history(
            conn, move=move, previous=previous, share=share, event=event, now=now
        )
        self._checkpoint("move.history_written")
        conn.execute(
            t.outbox.insert().values(
                event_id=str(event.event_id),
                topic_key=event.key,
                payload=event.model_dump_json(),
                created_at_us=to_epoch_us(now),
                published_at_us=None,
                attempts=0,
                last_error=None,
            )
        )
        self._checkpoint("move.outbox_written")
        return entry, event

    def _default_share(
        self, conn: sa.Connection, move: _MoveRequest, current: AliasState | None
    ) -> float:
        if move.alias == "challenger":
            return current.traffic_share if current is not None else 0.1
        challenger = self._alias_row(conn, move.scope, "challenger", lock=False)
        return 1.0 - (challenger.traffic_share if challenger is not None else 0.0)

    def _write_alias(
        self,
        conn: sa.Connection,
        move: _MoveRequest,
        current: AliasState | None,
        share: float,
        now: datetime,
    ) -> None:
        values = {
            "version": move.target.version,
            "traffic_share": share,
            "updated_at_us": to_epoch_us(now),
        }
        if current is None:
            conn.execute(
                t.aliases.insert().values(
                    scope=move.scope, alias=move.alias, generation=1, **values
                )
            )
            return
        result = conn.execute(
            t.aliases.update()
            .where(
                t.aliases.c.scope == move.scope,
                t.aliases.c.alias == move.alias,
                t.aliases.c.generation == current.generation,
            )
            .values(generation=current.generation + 1, **values)
        )
        if result.rowcount != 1:
            raise AliasConflictError(f"{move.alias} of scope {move.scope} moved concurrently")

    def _append_history(
        self,
        conn: sa.Connection,
        *,
        move: _MoveRequest,
        previous: str | None,
        share: float,
        event: ModelPromotedEvent,
        now: datetime,
    ) -> HistoryEntry:
        values = {
            "scope": move.scope,
            "alias": move.alias,
            "event_type": event.event_type,
            "from_version": previous,
            "to_version": move.target.version,
            "traffic_share": share,
            "actor": move.actor,
            "reason": move.reason,
            "decision_record_id": None if move.record is None else move.record[1].record_id,
            "override": move.override,
            "event_id": str(event.event_id),
            "at_us": to_epoch_us(now),
        }
        new_id = conn.execute(t.history.insert().values(**values)).inserted_primary_key
        assert new_id is not None
        return _history_entry({**values, "id": new_id[0]})

    def _event(
        self,
        move: _MoveRequest,
        previous: str | None,
        share: float,
        event_type: ModelEventType,
        now: datetime,
    ) -> ModelPromotedEvent:
        card, directory = move.target.card, move.target.directory
        decision, metrics = None, {}
        if move.record is not None:
            owner, record = move.record
            uri = files.decision_path(self.root, owner, record.record_id).as_uri()
            decision = PromotionDecision(verdict=record.verdict, record_uri=uri)
            metrics = dict(record.metrics)
        window = card.data_window
        return ModelPromotedEvent(
            event_id=uuid.uuid4(),
            event_type=event_type,
            scope=move.scope,
            alias=move.alias,
            model_version=move.target.version,
            previous_version=previous,
            artifact_uri=(directory / card.weights_file).as_uri(),
            onnx_uri=None if card.onnx_file is None else (directory / card.onnx_file).as_uri(),
            card_uri=move.target.card_path.as_uri(),
            sha256=card.weights_sha256,
            onnx_sha256=card.onnx_sha256,
            featurizer_version=card.featurizer_version,
            traffic_share=share,
            metrics=metrics,
            decision=decision,
            lineage=Lineage(
                data_window=None if window is None else (window.start, window.end),
                events=None if window is None else window.events,
                parent_version=card.parent_version,
                study=card.tuning_study,
                trainer=card.trainer,
            ),
            actor=move.actor,
            reason=move.reason,
            promoted_at=now,
        )

    def _count_move(self, entry: HistoryEntry) -> None:
        counter = (
            self.metrics.rollbacks
            if entry.event_type == "model.rolled_back"
            else self.metrics.promotions
        )
        counter.labels(entry.alias, entry.actor).inc()
        self.metrics.last_promotion.labels(entry.scope, entry.alias).set(entry.at.timestamp())
        self.metrics.moved(entry.scope, entry.alias, entry.to_version, entry.from_version)

    def history(
        self, alias: AliasName | None = None, *, scope: str | None = ALL_COMPANIES
    ) -> list[HistoryEntry]:
        query = sa.select(t.history).order_by(t.history.c.id)
        if alias is not None:
            query = query.where(t.history.c.alias == alias)
        if scope is not None:
            query = query.where(t.history.c.scope == scope)
        with self._read() as conn:
            return [_history_entry(row) for row in conn.execute(query).mappings()]

    # --- outbox --------------------------------------------------------------------

    def pending_outbox(self, limit: int = 100) -> list[OutboxRow]:
        query = (
            sa.select(t.outbox)
            .where(t.outbox.c.published_at_us.is_(None))
            .order_by(t.outbox.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [_outbox_row(row) for row in conn.execute(query).mappings()]

    def outbox_backlog(self) -> int:
        with self._read() as conn:
            backlog = int(
                conn.execute(
                    sa.select(sa.func.count()).where(t.outbox.c.published_at_us.is_(None))
                ).scalar()
                or 0
            )
        self.metrics.outbox_backlog.set(backlog)
        return backlog

    def outbox(self) -> list[OutboxRow]:
        with self._read() as conn:
            query = sa.select(t.outbox).order_by(t.outbox.c.id)
            return [_outbox_row(row) for row in conn.execute(query).mappings()]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                t.outbox.update()
                .where(t.outbox.c.id.in_(list(ids)), t.outbox.c.published_at_us.is_(None))
                .values(published_at_us=to_epoch_us(at))
            )

    def record_publish_failure(self, ids: Sequence[int], error: str) -> None:
        if not ids:
            return
        with self._write() as conn:
            conn.execute(
                t.outbox.update()
                .where(t.outbox.c.id.in_(list(ids)))
                .values(attempts=t.outbox.c.attempts + 1, last_error=error[:500])
            )

    def refresh_metrics(self) -> None:
        """Set the champion info and backlog gauges from the database (at start-up)."""
        for state in self.aliases():
            self.metrics.moved(state.scope, state.alias, state.version, None)
            self.metrics.last_promotion.labels(state.scope, state.alias).set(
                state.updated_at.timestamp()
            )
        self.outbox_backlog()

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True, kw_only=True)
class _MoveRequest:
    """Everything one alias move needs, checked before the transaction opens."""

    scope: str
    alias: AliasName
    target: ModelVersion
    actor: str
    reason: str
    expected_previous: str | Unset | None
    record: tuple[str, DecisionRecord] | None
    """(owning version, record) of the decision behind the move."""
    traffic_share: float | None
    event_type: ModelEventType | None
    override: bool
    manual: DecisionRecord | None
    """An operator's record to store in the same transaction (forced promotion, rollback)."""

    def __post_init__(self) -> None:
        if self.alias not in ALIASES:
            raise InputError(f"alias must be champion or challenger, not {self.alias!r}")
        if not self.scope or "/" in self.scope:
            raise InputError(f"scope must be * or a company id without '/', not {self.scope!r}")
        share = self.traffic_share
        if share is not None and not 0.0 <= share <= 1.0:
            raise InputError(f"traffic share must be within [0, 1], not {share}")
        if not self.actor.strip():
            raise InputError("an alias move needs an actor")


def _manual_record(
    candidate: str, current: AliasState | None, verdict: str, reason: str, now: datetime
) -> DecisionRecord:
    """An operator's decision (forced promotion, manual rollback) as a decision record."""
    return DecisionRecord(
        record_id=str(uuid.uuid4()),
        candidate=candidate,
        champion=None if current is None else current.version,
        verdict="promote" if verdict == "promote" else "reject",
        gates=(),
        reasons=(reason,),
        seeds="none",
        kind="manual",
        created_at=now,
    )


def _rollback_target(entries: Sequence[HistoryEntry], current: AliasState | None) -> str | None:
    """History as a stack: promotions push, rollbacks pop; the target is below the top."""
    stack: list[str] = []
    for entry in entries:
        if entry.event_type == "model.rolled_back":
            while stack and stack[-1] != entry.to_version:
                stack.pop()
            if not stack:
                stack.append(entry.to_version)
        elif not stack or stack[-1] != entry.to_version:
            stack.append(entry.to_version)
    if current is None or not stack or stack[-1] != current.version:
        return None
    below = [version for version in stack[:-1] if version != current.version]
    return below[-1] if below else None


def _version_values(
    seq: int, version: str, card: ModelCard, now: datetime, actor: str
) -> dict[str, Any]:
    return {
        "seq": seq,
        "version": version,
        "content_sha256": card.content_sha256,
        "model_id": card.model_id,
        "trainer": card.trainer,
        "featurizer_version": card.featurizer_version,
        "weights_sha256": card.weights_sha256,
        "onnx_sha256": card.onnx_sha256,
        "card_json": card.model_dump_json(),
        "registered_at_us": to_epoch_us(now),
        "registered_by": actor,
    }


def _alias_state(row: Any) -> AliasState:
    return AliasState(
        scope=row["scope"],
        alias=row["alias"],
        version=row["version"],
        traffic_share=row["traffic_share"],
        generation=row["generation"],
        updated_at=from_epoch_us(row["updated_at_us"]),
    )


def _history_entry(row: Any) -> HistoryEntry:
    values = dict(row)
    values["at"] = from_epoch_us(values.pop("at_us"))
    values["override"] = bool(values["override"])
    return HistoryEntry.model_validate(values)


def _outbox_row(row: Any) -> OutboxRow:
    published = row["published_at_us"]
    return OutboxRow(
        id=row["id"],
        event_id=row["event_id"],
        key=row["topic_key"],
        payload=row["payload"],
        attempts=row["attempts"],
        published_at=None if published is None else from_epoch_us(published),
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def open_registry(
    store_url: str,
    root: Path,
    *,
    clock: Clock = _now,
    checkpoint: Checkpoint = no_checkpoint,
    metrics: RegistryMetrics | None = None,
) -> SqlRegistry:
    """The registry in the store database at `store_url` (migrated to head) and `root`.

    Raises `replay.StoreUnavailableError` (one sentence) when the database cannot be opened."""
    engine, _description = open_engine(store_url)
    registry = SqlRegistry(engine, root, clock=clock, checkpoint=checkpoint, metrics=metrics)
    try:
        registry.refresh_metrics()
    except RegistryUnavailableError:
        registry.close()
        raise
    return registry
