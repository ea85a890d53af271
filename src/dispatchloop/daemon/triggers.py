"""When to start a cycle: interval, new events, drift, operator request; when to skip one.

Pure functions of small typed inputs, so the scheduler's decisions are tested
without a clock, a database or a broker. The drift score is the Population
Stability Index (PSI) on quantile bins of the reference window: an effect size,
so it does not flag a negligible shift just because Kafka volumes make any
difference "significant" (a p-value at 10^5 events flags everything).
Conventional reading: PSI < 0.1 stable, 0.1-0.2 moderate, > 0.2 a major shift.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from dispatchloop.daemon.cycles import Cycle, Trigger
from dispatchloop.decisions.reward import event_reward
from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.settings import RewardSettings

PSI_BINS = 10
PSI_FLOOR = 1e-4
"""Smallest bin share used in the log ratio: an empty bin must not make PSI infinite."""
MAX_ABORTED_RETRIES = 2
"""A cycle aborted by a crash or a lost leader is re-run at once, at most this many times in a
row (a cycle that itself kills the process must not make every restart retrain)."""
MIN_DRIFT_SAMPLE = 200
"""Below this many events in either window no drift is claimed (too few to tell)."""
DRIFT_FEATURES = ("reward", "pickup_delay_min", "empty_km", "candidates", "priority", "lead_min")


@dataclass(frozen=True)
class TriggerPolicy:
    """The thresholds (from settings.loop)."""

    interval: timedelta
    """Retrain at least this often."""
    new_events: int
    """Retrain once this many events were stored since the last cycle started."""
    drift_threshold: float
    """PSI above which a distribution counts as drifted."""
    min_events: int
    """A cycle needs at least this many events in its window."""


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature between the last training window and the recent window."""

    scores: Mapping[str, float]
    """Feature name → PSI (larger is more different)."""
    drifted: tuple[str, ...]
    """Features whose PSI exceeds the threshold."""
    reference_events: int
    """Events sampled from the training window."""
    recent_events: int
    """Events sampled from the recent window."""

    @property
    def max_score(self) -> float:
        """The largest PSI (0 when nothing was compared)."""
        return max(self.scores.values(), default=0.0)


@dataclass(frozen=True)
class TriggerState:
    """What the triggers look at, gathered by the scheduler at each check."""

    now: datetime
    """The check's time (UTC)."""
    last: Cycle | None
    """The newest cycle of any outcome, None before the first."""
    events_now: int
    """Events in the store now."""
    pending_requests: int
    """Unconsumed `dispatchloop retrain` requests."""
    drift: DriftReport | None = None
    """The drift comparison, when one was computed for this check."""
    aborted_in_row: int = 0
    """How many of the newest cycles, in a row, were aborted."""


def due_trigger(policy: TriggerPolicy, state: TriggerState) -> Trigger | None:
    """The trigger that fires now, by priority request > drift > new events > interval.

    A first cycle starts as soon as the store holds `min_events`; a cycle skipped
    for lack of data is retried as soon as there is enough, not an interval later;
    an aborted cycle (crash, lost leader, stop) is re-run with its own trigger.
    """
    if state.pending_requests > 0:
        return "request"
    last = state.last
    if last is None:
        return "interval" if state.events_now >= policy.min_events else None
    if last.outcome == "running":
        return None
    if last.outcome == "aborted" and state.aborted_in_row <= MAX_ABORTED_RETRIES:
        return last.trigger
    if state.drift is not None and state.drift.drifted:
        return "drift"
    seen = last.events_seen or 0
    if last.outcome == "skipped" and state.events_now >= policy.min_events > seen:
        return "new_events"
    if state.events_now - seen >= policy.new_events:
        return "new_events"
    if state.now - last.started_at >= policy.interval:
        return "interval"
    return None


def skip_reason(events_in_window: int, min_events: int) -> str | None:
    """One sentence when the window is too small to train on, else None."""
    if events_in_window >= min_events:
        return None
    return (
        f"the training window holds {events_in_window} stored events, fewer than the "
        f"{min_events} a cycle needs (DISPATCHLOOP_LOOP__MIN_EVENTS)"
    )


def tune_due(last_tuned: datetime | None, now: datetime, tune_interval: timedelta) -> bool:
    """Re-tuning runs on its own, longer interval (and before the first training)."""
    return last_tuned is None or now - last_tuned >= tune_interval


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population Stability Index of `recent` against `reference` on reference quantile bins.

    Bins are the reference's quantiles, so each holds ~1/bins of it; tied values
    (discrete features) merge bins instead of making empty ones.
    """
    reference = np.asarray(reference, dtype=np.float64)
    recent = np.asarray(recent, dtype=np.float64)
    if reference.size == 0 or recent.size == 0:
        raise ValueError("PSI needs two non-empty samples")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(
        np.searchsorted(edges, reference, side="right"), minlength=edges.size + 1
    )
    actual = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=edges.size + 1)
    p = np.maximum(expected / reference.size, PSI_FLOOR)
    q = np.maximum(actual / recent.size, PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def event_features(
    events: Iterable[DispatchOutcomeEvent], reward: RewardSettings
) -> dict[str, np.ndarray]:
    """The drift features of each event: its reward and a few outcome and booking features."""
    columns: dict[str, list[float]] = {name: [] for name in DRIFT_FEATURES}
    for event in events:
        columns["reward"].append(event_reward(event, reward))
        columns["pickup_delay_min"].append(event.outcome.pickup_delay_min)
        columns["empty_km"].append(event.outcome.empty_km)
        columns["candidates"].append(float(len(event.candidates)))
        columns["priority"].append(float(event.booking.priority))
        lead = (event.booking.window_start - event.decided_at).total_seconds() / 60.0
        columns["lead_min"].append(lead)
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def drift_report(
    reference: Mapping[str, np.ndarray], recent: Mapping[str, np.ndarray], threshold: float
) -> DriftReport:
    """PSI per shared feature; nothing counts as drifted when either sample is too small."""
    n_ref = min((len(v) for v in reference.values()), default=0)
    n_recent = min((len(v) for v in recent.values()), default=0)
    if n_ref < MIN_DRIFT_SAMPLE or n_recent < MIN_DRIFT_SAMPLE:
        return DriftReport({}, (), n_ref, n_recent)
    scores = {name: psi(reference[name], recent[name]) for name in reference if name in recent}
    drifted = tuple(sorted(name for name, score in scores.items() if score > threshold))
    return DriftReport(scores, drifted, n_ref, n_recent)
