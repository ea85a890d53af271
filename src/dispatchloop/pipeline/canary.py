"""The canary on the registry: start one, judge it on stored outcomes, end it.

The canary's state is the registry's: a `challenger` alias with a traffic share
above 0 on another version than the champion is a running canary, and it started
when the later of the two aliases last moved to what they serve now. Nothing else
is stored, so a restart or a new leader carries on with the same canary (and the
same start) without a table of its own.

A look counts the stored outcome events decided since the start, split by
`action.model_version` (the arm that decided: serving stamps it), and asks
`evaluation.canary.judge_canary` for a verdict. The counts are kept between looks
as each arm's totals (`ArmTotals`) with the store position read up to, so a look
reads only what was stored since the last (a day's canary at hundreds of events a
second would otherwise re-read millions of events every five minutes). The first
look of a canary in this process (a new canary, a restart, a new leader) starts at
`ReplayStore.position_before(start)`: outcomes arrive after their decision, so
every event decided since the start is stored after it. Totals are in memory
only: the registry stays the one state, and a restart counts again from the start.
As for any store-order follower, with several PostgreSQL writers an event committed
after a later-numbered one can be missed by the running totals (not by a recount);
it is as likely on either arm, so the comparison stays fair.

A decisive verdict is written as a decision record (kind `canary`, with the live
shadow figures in its metrics) on the challenger's version, then the aliases move
(each move compare-and-swap, with its outbox row in the same transaction):

- promote: `champion` := the challenger (share 1), and the challenger's share := 0
  (`model.traffic_changed`), both in one transaction (`set_aliases`): a crash
  leaves both moves or neither, and the two events are queued in that order;
- rollback: `challenger` := the champion's version at share 0 (`model.rolled_back`:
  a rollback names the version now serving);
- insufficient evidence (maximum duration): the challenger's share := 0
  (`model.traffic_changed`), the version stays registered with its record.

Every move references the canary record. Only scope `*` is judged (per-company
canaries are left alone). Called from one thread (the leader's worker).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from dispatchloop.decisions.reward import event_reward
from dispatchloop.errors import TransientError
from dispatchloop.evaluation.canary import (
    NO_OUTCOMES,
    ArmOutcomes,
    ArmTotals,
    CanaryResult,
    CanaryThresholds,
    canary_record,
    judge_canary,
)
from dispatchloop.events import DecisionRecord, GateResult
from dispatchloop.registry.base import (
    UNSET,
    AliasChange,
    HistoryEntry,
    ModelRegistry,
    Unset,
    VersionIntegrityError,
)
from dispatchloop.replay.base import ReplayStore, StoredEvent, StoreUnavailableError
from dispatchloop.settings import LoopSettings, RewardSettings

CanaryAction = Literal["none", "continue", "promoted", "rolled_back", "ended", "fenced"]
DAEMON_ACTOR = "daemon"


@dataclass(frozen=True)
class CanaryState:
    """A running canary as the registry shows it."""

    champion: str
    """The version serving the rest of the decisions."""
    challenger: str
    """The version on canary."""
    share: float
    """The challenger's share of decisions."""
    started_at: datetime
    """When the later of the two aliases moved to what it serves now."""


READ_PAGE = 5_000
"""Events read per store query while a look catches up, and folded into the totals at once."""


@dataclass(frozen=True)
class _Tally:
    """One canary's outcomes counted so far, and the store position read up to."""

    state: CanaryState
    """The canary counted (a new champion, challenger or start is another canary)."""
    position: int
    """Every event stored up to here is counted (or is not the canary's)."""
    champion: ArmTotals
    """The champion-served decisions' totals."""
    challenger: ArmTotals
    """The challenger-served decisions' totals."""


@dataclass(frozen=True)
class CanaryCheck:
    """What one look found and did."""

    state: CanaryState | None
    """The canary looked at; None when none runs."""
    result: CanaryResult | None
    """The statistics of the look; None when there was nothing to judge."""
    action: CanaryAction
    """none (no canary), continue, promoted, rolled_back, ended (max duration or a leftover
    share), fenced (no longer the leader: nothing moved)."""
    record: DecisionRecord | None = None
    """The canary decision record behind the move, if any."""


@dataclass(frozen=True)
class CanaryConfig:
    """The canary's settings (settings.loop), taken once by the entry point."""

    share: float
    """Traffic share a promoted candidate starts with (0: no canary)."""
    duration: timedelta
    """Maximum duration; undecided then: insufficient evidence."""
    thresholds: CanaryThresholds
    """Confidence, minimum decisions, guardrail margins, planned decisions."""

    @classmethod
    def from_settings(cls, loop: LoopSettings) -> CanaryConfig:
        return cls(
            share=loop.canary_share,
            duration=timedelta(seconds=loop.canary_duration_s),
            thresholds=CanaryThresholds(
                confidence=loop.canary_confidence,
                min_decisions=loop.canary_min_decisions,
                late_margin=loop.canary_late_margin,
                cancel_margin=loop.canary_cancel_margin,
                planned_decisions=loop.canary_planned_decisions,
            ),
        )


class RegistryCanary:
    """The `Canary` protocol (pipeline.protocols) over the registry and the replay store."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: ReplayStore,
        reward: RewardSettings,
        config: CanaryConfig,
        *,
        clock: Callable[[], datetime],
        actor: str = DAEMON_ACTOR,
        shadow: Callable[[], Mapping[str, float]] = dict,
    ) -> None:
        """`shadow` gives the live shadow figures copied into each verdict's record
        (daemon.shadow.ShadowScorer.record_metrics; default none), as a cycle's record has."""
        self._shadow = shadow
        self._registry = registry
        self._store = store
        self._reward = reward
        self.config = config
        self._clock = clock
        self._actor = actor
        self._tally: _Tally | None = None

    @property
    def share(self) -> float:
        return self.config.share

    def challenger(self) -> str | None:
        state = self._registry.alias("challenger")
        return None if state is None else state.version

    def start(
        self, version: str, record: DecisionRecord, expected: str | Unset | None = UNSET
    ) -> None:
        """`challenger` := version at the canary share, if it still is `expected`."""
        reasons = "; ".join(record.reasons) or "all gates passed"
        self._registry.set_alias(
            "challenger",
            version,
            actor=self._actor,
            reason=f"canary at {self.share:.0%}: gate {record.record_id}: {reasons}"[:500],
            expected_previous=expected,
            decision_record_id=record.record_id,
            traffic_share=self.share,
            event_type="model.promoted",
        )

    def state(self) -> CanaryState | None:
        """The running canary (a leftover share on the champion's own version counts too)."""
        champion = self._registry.alias("champion")
        challenger = self._registry.alias("challenger")
        if champion is None or challenger is None or challenger.traffic_share <= 0.0:
            return None
        started = max(
            _serving_since(self._registry.history("challenger"), challenger.version),
            _serving_since(self._registry.history("champion"), champion.version),
        )
        return CanaryState(champion.version, challenger.version, challenger.traffic_share, started)

    def check(self, leading: Callable[[], bool]) -> CanaryCheck:
        """One look: judge the running canary and act on a decisive verdict."""
        state = self.state()
        if state is None:
            return CanaryCheck(None, None, "none")
        if state.challenger == state.champion:
            if not leading():
                return CanaryCheck(state, None, "fenced")
            self._end(state, None, "the challenger already is the champion: its share ends")
            return CanaryCheck(state, None, "ended")
        now = self._clock()
        champion, challenger = self._outcomes(state)
        expired = now - state.started_at >= self.config.duration
        result = judge_canary(champion, challenger, self.config.thresholds, expired=expired)
        if result.verdict == "continue":
            return CanaryCheck(state, result, "continue")
        if not leading():
            return CanaryCheck(state, result, "fenced")
        record = canary_record(
            result,
            challenger=state.challenger,
            champion=state.champion,
            thresholds=self.config.thresholds,
            started_at=state.started_at,
            now=now,
        )
        record = record.model_copy(update={"metrics": {**self._shadow(), **record.metrics}})
        record = self._verified(state, record)
        self._registry.attach_decision(state.challenger, record)
        return CanaryCheck(state, result, self._act(state, record), record)

    def _verified(self, state: CanaryState, record: DecisionRecord) -> DecisionRecord:
        """A promotion only of intact files: a challenger failing `verify` is rolled back."""
        if record.verdict != "promote":
            return record
        try:
            self._registry.verify(state.challenger)
        except VersionIntegrityError as exc:
            return _refused(record, exc)
        return record

    def _act(self, state: CanaryState, record: DecisionRecord) -> CanaryAction:
        reason = f"canary {record.record_id}: " + "; ".join(record.reasons)
        if record.verdict == "promote":
            promoted = AliasChange(
                alias="champion", version=state.challenger, expected_previous=state.champion,
                traffic_share=1.0, event_type="model.promoted",
            )  # fmt: skip
            self._registry.set_aliases(
                [promoted, self._ended(state)], actor=self._actor, reason=reason[:500],
                decision_record_id=record.record_id,
            )  # fmt: skip
            return "promoted"
        if record.verdict == "reject":
            self._registry.set_alias(
                "challenger", state.champion, actor=self._actor, reason=reason[:500],
                expected_previous=state.challenger, decision_record_id=record.record_id,
                traffic_share=0.0, event_type="model.rolled_back",
            )  # fmt: skip
            return "rolled_back"
        self._end(state, record, reason)
        return "ended"

    def _end(self, state: CanaryState, record: DecisionRecord | None, reason: str) -> None:
        """The challenger keeps its version at share 0: no decision goes to it any more."""
        self._registry.set_aliases(
            [self._ended(state)], actor=self._actor, reason=reason[:500],
            decision_record_id=None if record is None else record.record_id,
        )  # fmt: skip

    @staticmethod
    def _ended(state: CanaryState) -> AliasChange:
        return AliasChange(
            alias="challenger", version=state.challenger, expected_previous=state.challenger,
            traffic_share=0.0, event_type="model.traffic_changed",
        )  # fmt: skip

    def _outcomes(self, state: CanaryState) -> tuple[ArmTotals, ArmTotals]:
        """Each arm's totals over the events decided since the start, stored so far."""
        try:
            if self._tally is None or self._tally.state != state:
                start = self._store.position_before(state.started_at)
                self._tally = _Tally(state, start, NO_OUTCOMES, NO_OUTCOMES)
            folding = _Fold(state, self._tally.position)
            for stored in self._store.iter_events_after(self._tally.position, READ_PAGE):
                folding.add(stored, self._reward)
                if folding.size >= READ_PAGE:
                    self._tally = folding.into(self._tally)  # totals and position together
                    folding = _Fold(state, self._tally.position)
            self._tally = folding.into(self._tally)
        except StoreUnavailableError as exc:
            raise TransientError(f"cannot read the canary's outcome events: {exc}") from exc
        return self._tally.champion, self._tally.challenger


class _Fold:
    """Outcomes read since the tally's position, per arm, until added to the tally.

    Events are dropped as they are read (only the three figures are kept)."""

    def __init__(self, state: CanaryState, position: int) -> None:
        self._state = state
        self.position = position
        self.size = 0
        self._arms: dict[str, tuple[list[float], list[bool], list[bool]]] = {
            state.champion: ([], [], []),
            state.challenger: ([], [], []),
        }

    def add(self, stored: StoredEvent, reward: RewardSettings) -> None:
        self.position, self.size = stored.position, self.size + 1
        event = stored.event
        arm = self._arms.get(event.action.model_version or "")
        if arm is None or event.decided_at < self._state.started_at:
            return  # another version's, or an outcome of a decision from before the canary
        arm[0].append(event_reward(event, reward))
        arm[1].append(event.outcome.status == "late")
        arm[2].append(event.outcome.status == "cancelled")

    def into(self, tally: _Tally) -> _Tally:
        """`tally` with these outcomes added and its position moved past them."""
        state = self._state
        return _Tally(
            state,
            self.position,
            tally.champion.plus(ArmTotals.of(_arm(self._arms[state.champion]))),
            tally.challenger.plus(ArmTotals.of(_arm(self._arms[state.challenger]))),
        )


def _refused(record: DecisionRecord, exc: VersionIntegrityError) -> DecisionRecord:
    """The canary's record turned into a rejection: the challenger failed verification."""
    integrity = GateResult(
        name="canary.integrity", passed=False, detail=f"the challenger fails verify: {exc}"
    )
    return record.model_copy(
        update={
            "record_id": str(uuid.uuid4()),
            "verdict": "reject",
            "gates": (*record.gates, integrity),
            "reasons": (*record.reasons, f"but it cannot be promoted: {exc}"),
        }
    )


def _arm(values: tuple[list[float], list[bool], list[bool]]) -> ArmOutcomes:
    reward, late, cancelled = values
    return ArmOutcomes(
        np.asarray(reward, dtype=np.float64),
        np.asarray(late, dtype=np.bool_),
        np.asarray(cancelled, dtype=np.bool_),
    )


def _serving_since(history: list[HistoryEntry], version: str) -> datetime:
    """Start of the last unbroken run of moves that left the alias on `version`, serving."""
    since: datetime | None = None
    for entry in history:
        if entry.to_version == version and entry.traffic_share > 0.0:
            since = since or entry.at
        else:
            since = None
    if since is None:
        raise TransientError(f"the alias history does not show {version} serving; re-read later")
    return since
