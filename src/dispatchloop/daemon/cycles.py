"""The loop's rows: cycles, operator retrain requests and leadership epochs (migration 0004).

Why in the database: any instance's leader must see a request made through any
other instance, the next leader must find (and mark aborted) the cycle its dead
predecessor was running, and `dispatchloop cycles list` must work from any host.
Every method is one short transaction; a database error becomes TransientError
(the scheduler skips the cycle and retries), so callers name one class.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from dispatchloop.errors import FatalError, TransientError
from dispatchloop.replay.base import ReplayStore, TimeWindow
from dispatchloop.replay.sql_store import SqlReplayStore, first_line

Trigger = Literal["interval", "new_events", "drift", "request"]
Outcome = Literal[
    "running", "promoted", "rejected", "insufficient_evidence", "skipped", "failed", "aborted"
]
TRIGGERS: tuple[Trigger, ...] = ("interval", "new_events", "drift", "request")
OUTCOMES: tuple[Outcome, ...] = (
    "running",
    "promoted",
    "rejected",
    "insufficient_evidence",
    "skipped",
    "failed",
    "aborted",
)
SCOPE_ALL = "*"

_metadata = sa.MetaData()
_TS = sa.DateTime(timezone=True)
cycles_table = sa.Table(
    "loop_cycles",
    _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("scope", sa.Text()),
    sa.Column("trigger", sa.Text()),
    sa.Column("stage", sa.Text()),
    sa.Column("outcome", sa.Text()),
    sa.Column("version", sa.Text()),
    sa.Column("reasons", sa.JSON()),
    sa.Column("timings", sa.JSON()),
    sa.Column("leader_id", sa.Text()),
    sa.Column("leader_epoch", sa.BigInteger()),
    sa.Column("events_seen", sa.BigInteger()),
    sa.Column("window_start", _TS),
    sa.Column("window_end", _TS),
    sa.Column("started_at", _TS),
    sa.Column("finished_at", _TS),
)
requests_table = sa.Table(
    "loop_retrain_requests",
    _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("reason", sa.Text()),
    sa.Column("requested_by", sa.Text()),
    sa.Column("requested_at", _TS),
    sa.Column("cycle_id", sa.BigInteger()),
    sa.Column("consumed_at", _TS),
)
leadership_table = sa.Table(
    "loop_leadership",
    _metadata,
    sa.Column("epoch", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("leader_id", sa.Text()),
    sa.Column("acquired_at", _TS),
)


@dataclass(frozen=True)
class Cycle:
    """One cycle as stored."""

    id: int
    """Increasing id: newer cycles have larger ids."""
    scope: str
    """`*` (all companies) in this release."""
    trigger: Trigger
    """What started it."""
    stage: str
    """The stage it reached: fit, tune, train, judge, register, promote, publish, done."""
    outcome: Outcome
    """running until finished; aborted if its leader died."""
    version: str | None
    """The version registered by this cycle, if it got that far."""
    reasons: tuple[str, ...]
    """One sentence per reason (skip, failure, the gate's reasons)."""
    timings: Mapping[str, float]
    """Seconds per finished stage."""
    leader_id: str
    """The instance that ran it."""
    leader_epoch: int
    """The leadership term it ran in (the fencing token)."""
    events_seen: int | None
    """Stored events when it started (the new-events trigger counts from here)."""
    window: TimeWindow
    """The training window (the drift trigger compares against it)."""
    started_at: datetime
    """When it started (UTC)."""
    finished_at: datetime | None
    """When it finished (UTC), None while running."""

    def to_json(self) -> dict[str, Any]:
        """The `cycles list|show --json` shape."""
        return {
            "id": self.id,
            "scope": self.scope,
            "trigger": self.trigger,
            "stage": self.stage,
            "outcome": self.outcome,
            "version": self.version,
            "reasons": list(self.reasons),
            "timings": dict(self.timings),
            "leader": {"id": self.leader_id, "epoch": self.leader_epoch},
            "events_seen": self.events_seen,
            "window": [_iso(self.window.start), _iso(self.window.end)],
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


@dataclass(frozen=True)
class RetrainRequest:
    """An operator's `dispatchloop retrain`, until a leader consumes it."""

    id: int
    """Increasing id."""
    reason: str
    """Free text from `--reason`."""
    requested_by: str
    """user@host that asked."""
    requested_at: datetime
    """When (UTC)."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def engine_of(store: ReplayStore) -> sa.Engine:
    """The SQL engine behind a store: the loop's rows live next to the events."""
    if not isinstance(store, SqlReplayStore):
        raise FatalError(f"the loop needs an SQL replay store, not {type(store).__name__}")
    return store.engine


def requester() -> str:
    """Who is asking, for the request row (user@host)."""
    import getpass  # noqa: PLC0415 - only the CLI's retrain needs it

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class CycleStore:
    """Reads and writes the loop's rows on one engine (the replay store's)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    @contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            raise TransientError(f"cannot reach the loop's tables: {first_line(exc)}") from exc

    # --- cycles ---------------------------------------------------------------------

    def start(
        self,
        trigger: Trigger,
        leader_id: str,
        leader_epoch: int,
        *,
        events_seen: int | None = None,
        scope: str = SCOPE_ALL,
    ) -> int:
        """A new running cycle at stage `fit`; returns its id."""
        with self._begin() as conn:
            result = conn.execute(
                cycles_table.insert().values(
                    scope=scope,
                    trigger=trigger,
                    stage="fit",
                    outcome="running",
                    reasons=[],
                    timings={},
                    leader_id=leader_id,
                    leader_epoch=leader_epoch,
                    events_seen=events_seen,
                    started_at=_now(),
                )
            )
            return _new_id(result)

    def advance(
        self,
        cycle_id: int,
        stage: str,
        timings: Mapping[str, float],
        *,
        window: TimeWindow | None = None,
        version: str | None = None,
    ) -> None:
        """Record the stage a running cycle enters, its timings so far, window and version."""
        values: dict[str, Any] = {"stage": stage, "timings": dict(timings)}
        if window is not None:
            values.update(window_start=window.start, window_end=window.end)
        if version is not None:
            values["version"] = version
        with self._begin() as conn:
            conn.execute(
                cycles_table.update()
                .where(cycles_table.c.id == cycle_id, cycles_table.c.outcome == "running")
                .values(**values)
            )

    def finish(
        self,
        cycle_id: int,
        outcome: Outcome,
        reasons: Sequence[str] = (),
        timings: Mapping[str, float] | None = None,
        version: str | None = None,
    ) -> bool:
        """Close a running cycle; False if it was not running (e.g. already aborted)."""
        if outcome == "running":
            raise ValueError("finish needs a final outcome")
        values: dict[str, Any] = {
            "outcome": outcome,
            "reasons": list(reasons),
            "finished_at": _now(),
        }
        if timings is not None:
            values["timings"] = dict(timings)
        if version is not None:
            values["version"] = version
        with self._begin() as conn:
            result = conn.execute(
                cycles_table.update()
                .where(cycles_table.c.id == cycle_id, cycles_table.c.outcome == "running")
                .values(**values)
            )
            return result.rowcount == 1

    def abort_orphans(self, current_epoch: int, *, own: bool = False) -> list[int]:
        """Mark aborted every running cycle of an earlier leadership term; return their ids.

        Called by a new leader before its first cycle: a running cycle of an older
        epoch belongs to a leader that died or lost its lock mid-cycle. `own=True`
        includes the current term: the leader calls it while no cycle of its own
        runs, for a row whose end could not be written (the database was down).
        """
        newest = current_epoch if own else current_epoch - 1
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(cycles_table.c.id, cycles_table.c.stage, cycles_table.c.leader_id).where(
                    cycles_table.c.outcome == "running",
                    cycles_table.c.leader_epoch <= newest,
                )
            ).all()
            for cycle_id, stage, leader in rows:
                conn.execute(
                    cycles_table.update()
                    .where(cycles_table.c.id == cycle_id, cycles_table.c.outcome == "running")
                    .values(
                        outcome="aborted",
                        finished_at=_now(),
                        reasons=[
                            f"leader {leader} stopped during stage {stage} "
                            f"(found by the leader of epoch {current_epoch})"
                        ],
                    )
                )
        return [int(row[0]) for row in rows]

    def recent(self, limit: int = 20, scope: str | None = None) -> list[Cycle]:
        """Newest first."""
        query = sa.select(cycles_table).order_by(cycles_table.c.id.desc()).limit(limit)
        if scope is not None:
            query = query.where(cycles_table.c.scope == scope)
        with self._begin() as conn:
            return [_cycle(row) for row in conn.execute(query).mappings()]

    def get(self, cycle_id: int) -> Cycle | None:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(cycles_table).where(cycles_table.c.id == cycle_id))
                .mappings()
                .first()
            )
        return _cycle(row) if row is not None else None

    def last(self, outcomes: Sequence[Outcome] | None = None) -> Cycle | None:
        """The newest cycle (with one of `outcomes`, when given)."""
        query = sa.select(cycles_table).order_by(cycles_table.c.id.desc()).limit(1)
        if outcomes is not None:
            query = query.where(cycles_table.c.outcome.in_(list(outcomes)))
        with self._begin() as conn:
            row = conn.execute(query).mappings().first()
        return _cycle(row) if row is not None else None

    def oldest_start(self) -> datetime | None:
        """When the first cycle started (the re-tuning clock starts there)."""
        with self._begin() as conn:
            value = conn.execute(sa.select(sa.func.min(cycles_table.c.started_at))).scalar()
        return _utc(value)

    # --- operator requests ----------------------------------------------------------

    def request_retrain(self, reason: str, requested_by: str) -> int:
        """Queue an operator request; the leader's next check starts a cycle for it."""
        with self._begin() as conn:
            result = conn.execute(
                requests_table.insert().values(
                    reason=reason, requested_by=requested_by, requested_at=_now()
                )
            )
            return _new_id(result)

    def pending_requests(self) -> list[RetrainRequest]:
        """Unconsumed requests, oldest first."""
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(requests_table)
                .where(requests_table.c.consumed_at.is_(None))
                .order_by(requests_table.c.id)
            ).mappings()
            return [
                RetrainRequest(
                    id=int(row["id"]),
                    reason=str(row["reason"]),
                    requested_by=str(row["requested_by"]),
                    requested_at=_utc(row["requested_at"]) or _now(),
                )
                for row in rows
            ]

    def consume_requests(self, request_ids: Sequence[int], cycle_id: int) -> None:
        """Mark requests as served by `cycle_id`."""
        if not request_ids:
            return
        with self._begin() as conn:
            conn.execute(
                requests_table.update()
                .where(
                    requests_table.c.id.in_(list(request_ids)),
                    requests_table.c.consumed_at.is_(None),
                )
                .values(cycle_id=cycle_id, consumed_at=_now())
            )

    # --- leadership epochs ----------------------------------------------------------

    def new_epoch(self, leader_id: str) -> int:
        """Open a new leadership term; its number is larger than every earlier one."""
        with self._begin() as conn:
            result = conn.execute(
                leadership_table.insert().values(leader_id=leader_id, acquired_at=_now())
            )
            return _new_id(result)

    def current_epoch(self) -> int:
        """The newest term (0 before any leader)."""
        with self._begin() as conn:
            value = conn.execute(sa.select(sa.func.max(leadership_table.c.epoch))).scalar()
        return int(value or 0)


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:
        raise FatalError("the database returned no id for a new row")
    return int(key[0])


def _cycle(row: sa.RowMapping) -> Cycle:
    return Cycle(
        id=int(row["id"]),
        scope=str(row["scope"]),
        trigger=row["trigger"],
        stage=str(row["stage"]),
        outcome=row["outcome"],
        version=row["version"],
        reasons=tuple(row["reasons"] or ()),
        timings=dict(row["timings"] or {}),
        leader_id=str(row["leader_id"]),
        leader_epoch=int(row["leader_epoch"]),
        events_seen=row["events_seen"],
        window=TimeWindow(_utc(row["window_start"]), _utc(row["window_end"])),
        started_at=_utc(row["started_at"]) or _now(),
        finished_at=_utc(row["finished_at"]),
    )
