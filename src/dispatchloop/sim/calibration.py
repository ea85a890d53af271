"""Estimators behind `Scenario.fit`: the simulated world, calibrated from logged events.

Each estimator is simple and consistent for data the simulator itself produced
(tested by fitting events generated with known parameters), and reasonable for
real data:

- fleet size: median number of candidates per decision (every driver on shift
  is a candidate); bookings per episode: median events per episode_id.
- arrivals: decisions per UTC hour of day, divided by the number of episodes.
- locations: up to MAX_POINTS historical pickups and drop-offs (evenly thinned),
  which the simulator resamples with jitter; priority mix: frequencies.
- lead time (window_start − decided_at): shifted exponential, shift = minimum,
  mean excess = mean − minimum (its maximum-likelihood fit); window: median length.
- travel speed: ratio of sums Σ empty_km / Σ drive time, where the drive time of
  a decision is arrival − decided_at − available_in_min of the chosen driver and
  arrival = window_start + pickup_delay_min (the simulator's own timing rule).
  A ratio of sums weights long drives more and is not thrown by short ones.
- service time: median of occurred_at − pickup − trip time over served bookings
  (pickup = window_start + max(delay, 0); trip = (total_km − empty_km) / speed).
- unavailability: 1 − eligible share among routine/normal bookings; equipped
  share: eligible share among urgent bookings divided by (1 − unavailability).
- cancellation: least-squares line of the cancelled indicator on max(delay, 0)
  (a linear-probability model, matching the simulator's capped linear rule).

Fields the data cannot identify (jitter, initial busy time, cancellation cap)
keep the base scenario's values.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.sim.scenario import Scenario

MAX_POINTS = 512
MIN_DRIVE_MIN = 0.5


class ScenarioFitError(ValueError):
    """The events cannot calibrate a scenario (e.g. the window holds none)."""


@dataclass
class _Columns:
    """Per-event numbers the estimators need, gathered in one pass."""

    episodes: Counter[str] = field(default_factory=Counter)
    n_candidates: list[int] = field(default_factory=list)
    hours: list[int] = field(default_factory=list)
    pickups: list[tuple[float, float]] = field(default_factory=list)
    dropoffs: list[tuple[float, float]] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    lead_min: list[float] = field(default_factory=list)
    window_min: list[float] = field(default_factory=list)
    empty_km: list[float] = field(default_factory=list)
    drive_min: list[float] = field(default_factory=list)
    delay_min: list[float] = field(default_factory=list)
    cancelled: list[bool] = field(default_factory=list)
    trip_km: list[float] = field(default_factory=list)
    after_pickup_min: list[float] = field(default_factory=list)
    eligible_routine: list[float] = field(default_factory=list)
    eligible_urgent: list[float] = field(default_factory=list)

    def add(self, event: DispatchOutcomeEvent) -> None:
        booking, outcome = event.booking, event.outcome
        decided = event.decided_at
        self.episodes[event.episode_id] += 1
        self.n_candidates.append(len(event.candidates))
        self.hours.append(int(decided.timestamp() // 3600 % 24))
        self.pickups.append((booking.pickup.lat, booking.pickup.lon))
        self.dropoffs.append((booking.dropoff.lat, booking.dropoff.lon))
        self.priorities.append(booking.priority)
        lead = (booking.window_start - decided).total_seconds() / 60.0
        self.lead_min.append(lead)
        self.window_min.append((booking.window_end - booking.window_start).total_seconds() / 60.0)
        chosen = event.candidates[event.action_index]
        self.empty_km.append(outcome.empty_km)
        self.drive_min.append(lead + outcome.pickup_delay_min - chosen.available_in_min)
        self.delay_min.append(max(outcome.pickup_delay_min, 0.0))
        self.cancelled.append(outcome.status == "cancelled")
        pickup_at = booking.window_start.timestamp() / 60.0 + max(outcome.pickup_delay_min, 0.0)
        self.trip_km.append(outcome.total_km - outcome.empty_km)
        self.after_pickup_min.append(event.occurred_at.timestamp() / 60.0 - pickup_at)
        share = float(np.mean([c.eligible for c in event.candidates]))
        (self.eligible_urgent if booking.priority == 3 else self.eligible_routine).append(share)


def fit_events(events: Iterable[DispatchOutcomeEvent], base: Scenario) -> Scenario:
    """A scenario calibrated from events; `base` supplies what the data cannot identify."""
    cols = _Columns()
    for event in events:
        cols.add(event)
    if not cols.episodes:
        raise ScenarioFitError("no events in the window: cannot calibrate a scenario")
    speed = _travel_speed(cols, base.travel_speed_kmh)
    unavailable = 1.0 - float(np.mean(cols.eligible_routine)) if cols.eligible_routine else None
    lead = np.asarray(cols.lead_min)
    cancel_base, cancel_slope = _cancel_line(cols)
    return dataclasses.replace(
        base,
        n_drivers=int(np.clip(round(float(np.median(cols.n_candidates))), 1, 64)),
        bookings_per_episode=max(1, round(float(np.median(list(cols.episodes.values()))))),
        arrival_rate_by_hour=_arrivals(cols),
        pickup_points=_thin(cols.pickups),
        dropoff_points=_thin(cols.dropoffs),
        priority_mix=_priority_mix(cols.priorities),
        lead_time_min=max(float(lead.min()), 0.0),
        lead_time_mean_extra_min=max(float(lead.mean() - max(lead.min(), 0.0)), 0.0),
        window_min=max(float(np.median(cols.window_min)), 0.0),
        travel_speed_kmh=speed,
        service_min=_service_min(cols, speed, base.service_min),
        unavailable_prob=base.unavailable_prob if unavailable is None else unavailable,
        equipped_share=_equipped_share(cols, unavailable, base.equipped_share),
        cancel_base=cancel_base,
        cancel_per_delay_min=cancel_slope,
    )


def _arrivals(cols: _Columns) -> tuple[float, ...]:
    counts = np.bincount(np.asarray(cols.hours), minlength=24)[:24]
    return tuple(float(c) / len(cols.episodes) for c in counts)


def _thin(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """At most MAX_POINTS, evenly spread over the window (not just its start)."""
    if len(points) <= MAX_POINTS:
        return tuple(points)
    keep = np.linspace(0, len(points) - 1, MAX_POINTS).round().astype(np.int64)
    return tuple(points[i] for i in keep)


def _priority_mix(priorities: list[int]) -> tuple[float, float, float]:
    counts = np.bincount(np.asarray(priorities), minlength=4)[1:4].astype(np.float64)
    mix = counts / counts.sum()
    return (float(mix[0]), float(mix[1]), float(1.0 - mix[0] - mix[1]))


def _travel_speed(cols: _Columns, fallback: float) -> float:
    drive, empty = np.asarray(cols.drive_min), np.asarray(cols.empty_km)
    usable = drive > MIN_DRIVE_MIN
    if not usable.any() or empty[usable].sum() <= 0:
        return fallback
    return float(empty[usable].sum() / drive[usable].sum() * 60.0)


def _service_min(cols: _Columns, speed: float, fallback: float) -> float:
    served = ~np.asarray(cols.cancelled)
    if not served.any():
        return fallback
    trip_min = np.asarray(cols.trip_km)[served] / speed * 60.0
    service = np.asarray(cols.after_pickup_min)[served] - trip_min
    return max(float(np.median(service)), 0.0)


def _equipped_share(cols: _Columns, unavailable: float | None, fallback: float) -> float:
    if not cols.eligible_urgent or unavailable is None or unavailable >= 1.0:
        return fallback
    return float(np.clip(np.mean(cols.eligible_urgent) / (1.0 - unavailable), 0.0, 1.0))


def _cancel_line(cols: _Columns) -> tuple[float, float]:
    delay = np.asarray(cols.delay_min)
    cancelled = np.asarray(cols.cancelled, dtype=np.float64)
    design = np.column_stack([np.ones_like(delay), delay])
    (intercept, slope), *_ = np.linalg.lstsq(design, cancelled, rcond=None)
    return float(np.clip(intercept, 0.0, 1.0)), float(max(slope, 0.0))
