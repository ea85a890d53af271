"""Estimators behind `Scenario.fit`: the simulated world, calibrated from logged events.

Each estimator is simple and consistent for data the simulator itself produced
(tested by fitting events generated with known parameters), and reasonable for
real data:

- fleet size: median number of candidates per decision (every driver on shift
  is a candidate); bookings per episode: median events per episode_id.
- arrivals: decisions per UTC hour of day, divided by the number of episodes;
  shifts: median episode length and the hours episodes start in (see `_shifts`).
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
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.sim.scenario import Scenario

MAX_POINTS = 512
MAX_FIT_EVENTS = 200_000
"""Events that feed the estimators; beyond it Scenario.fit samples every k-th."""
MIN_DRIVE_MIN = 0.5


class ScenarioFitError(ValueError):
    """The events cannot calibrate a scenario (e.g. the window holds none)."""


def _floats() -> array[float]:
    return array("d")


@dataclass
class _Columns:
    """Per-event numbers the estimators need, gathered in one pass.

    Typed arrays (8 bytes a number), not lists of Python floats: a fit over a
    million stored events must not need gigabytes.
    """

    episodes: Counter[str] = field(default_factory=Counter)
    first_decided: dict[str, float] = field(default_factory=dict)
    last_decided: dict[str, float] = field(default_factory=dict)
    n_candidates: array[float] = field(default_factory=_floats)
    hours: array[float] = field(default_factory=_floats)
    pickup_lat: array[float] = field(default_factory=_floats)
    pickup_lon: array[float] = field(default_factory=_floats)
    dropoff_lat: array[float] = field(default_factory=_floats)
    dropoff_lon: array[float] = field(default_factory=_floats)
    priorities: array[float] = field(default_factory=_floats)
    lead_min: array[float] = field(default_factory=_floats)
    window_min: array[float] = field(default_factory=_floats)
    empty_km: array[float] = field(default_factory=_floats)
    drive_min: array[float] = field(default_factory=_floats)
    delay_min: array[float] = field(default_factory=_floats)
    cancelled: array[float] = field(default_factory=_floats)
    trip_km: array[float] = field(default_factory=_floats)
    after_pickup_min: array[float] = field(default_factory=_floats)
    eligible_routine: array[float] = field(default_factory=_floats)
    eligible_urgent: array[float] = field(default_factory=_floats)

    def count_episode(self, event: DispatchOutcomeEvent) -> None:
        episode, decided = event.episode_id, event.decided_at.timestamp()
        self.episodes[episode] += 1
        self.first_decided[episode] = min(self.first_decided.get(episode, decided), decided)
        self.last_decided[episode] = max(self.last_decided.get(episode, decided), decided)

    def add(self, event: DispatchOutcomeEvent) -> None:
        booking, outcome = event.booking, event.outcome
        decided = event.decided_at
        self.n_candidates.append(len(event.candidates))
        self.hours.append(decided.timestamp() // 3600 % 24)
        self.pickup_lat.append(booking.pickup.lat)
        self.pickup_lon.append(booking.pickup.lon)
        self.dropoff_lat.append(booking.dropoff.lat)
        self.dropoff_lon.append(booking.dropoff.lon)
        self.priorities.append(booking.priority)
        lead = (booking.window_start - decided).total_seconds() / 60.0
        self.lead_min.append(lead)
        self.window_min.append((booking.window_end - booking.window_start).total_seconds() / 60.0)
        chosen = event.candidates[event.action_index]
        self.empty_km.append(outcome.empty_km)
        self.drive_min.append(lead + outcome.pickup_delay_min - chosen.available_in_min)
        self.delay_min.append(max(outcome.pickup_delay_min, 0.0))
        self.cancelled.append(float(outcome.status == "cancelled"))
        pickup_at = booking.window_start.timestamp() / 60.0 + max(outcome.pickup_delay_min, 0.0)
        self.trip_km.append(outcome.total_km - outcome.empty_km)
        self.after_pickup_min.append(event.occurred_at.timestamp() / 60.0 - pickup_at)
        share = sum(c.eligible for c in event.candidates) / len(event.candidates)
        (self.eligible_urgent if booking.priority == 3 else self.eligible_routine).append(share)


def fit_events(
    events: Iterable[DispatchOutcomeEvent], base: Scenario, *, every: int = 1
) -> Scenario:
    """A scenario calibrated from events; `base` supplies what the data cannot identify.

    Episodes are counted over all events; the other estimators use every
    `every`-th event (a spread-out sample that bounds memory on large windows).
    """
    cols = _Columns()
    for index, event in enumerate(events):
        cols.count_episode(event)
        if index % every == 0:
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
        **_shifts(cols),
        pickup_points=_thin(cols.pickup_lat, cols.pickup_lon),
        dropoff_points=_thin(cols.dropoff_lat, cols.dropoff_lon),
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
    counts = np.bincount(np.asarray(cols.hours, dtype=np.int64), minlength=24)[:24]
    per_sampled = sum(cols.episodes.values()) / len(cols.hours)  # undo the `every` sampling
    return tuple(float(c) * per_sampled / len(cols.episodes) for c in counts)


def _shifts(cols: _Columns) -> dict[str, Any]:
    """Shift length and start hours from each episode's first and last decision.

    n decisions spread uniformly over a shift of length L span L·(n−1)/(n+1) on
    average and start L/(n+1) after it begins; both are corrected for. Episodes
    with one decision say nothing about their length and are left out.
    """
    lengths, starts = [], []
    for episode, n in cols.episodes.items():
        if n < 2:
            continue
        first, last = cols.first_decided[episode], cols.last_decided[episode]
        shift_s = (last - first) * (n + 1) / (n - 1)
        lengths.append(shift_s / 3600.0)
        starts.append(int((first - shift_s / (n + 1)) // 3600 % 24))
    if not lengths:
        return {"shift_hours": None, "shift_start_by_hour": None}
    counts = np.bincount(np.asarray(starts, dtype=np.int64), minlength=24)[:24]
    return {
        "shift_hours": float(np.clip(np.median(lengths), 1.0 / 60.0, 24.0)),
        "shift_start_by_hour": tuple(float(c) / len(starts) for c in counts),
    }


def _thin(lat: array[float], lon: array[float]) -> tuple[tuple[float, float], ...]:
    """At most MAX_POINTS, evenly spread over the window (not just its start)."""
    keep = np.arange(len(lat))
    if len(lat) > MAX_POINTS:
        keep = np.linspace(0, len(lat) - 1, MAX_POINTS).round().astype(np.int64)
    return tuple((lat[i], lon[i]) for i in keep)


def _priority_mix(priorities: array[float]) -> tuple[float, float, float]:
    counts = np.bincount(np.asarray(priorities, dtype=np.int64), minlength=4)[1:4].astype(
        np.float64
    )
    mix = counts / counts.sum()
    return (float(mix[0]), float(mix[1]), float(1.0 - mix[0] - mix[1]))


def _travel_speed(cols: _Columns, fallback: float) -> float:
    drive, empty = np.asarray(cols.drive_min), np.asarray(cols.empty_km)
    usable = drive > MIN_DRIVE_MIN
    if not usable.any() or empty[usable].sum() <= 0:
        return fallback
    return float(empty[usable].sum() / drive[usable].sum() * 60.0)


def _service_min(cols: _Columns, speed: float, fallback: float) -> float:
    served = np.asarray(cols.cancelled) == 0.0
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
