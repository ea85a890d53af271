"""`Scenario`: the world the simulator plays, as data (JSON-serialisable).

A scenario is stored with every model and study, so it holds plain numbers and
tuples only. Fleet size, bookings per episode and geography are *data*: they
come from `Scenario.default()` or `Scenario.fit(store, window)`, never from a
tuner (a tuner that shrinks the problem to raise the reward is cheating).

One episode is one simulated shift: `bookings_per_episode` booking decisions
whose decision times follow `arrival_rate_by_hour`, served by `n_drivers`.
With `shift_hours` set (fitted scenarios), a shift starts at an hour drawn from
`shift_start_by_hour` and its decisions follow the arrival rates within it, so
a 24/7 operation with 8-hour shifts keeps the load of 8 hours per episode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import DemandMap, demand_map

if TYPE_CHECKING:
    from dispatchloop.replay.base import ReplayStore, TimeWindow

CENTER_LAT, CENTER_LON = 46.2044, 6.1432  # Geneva: the default world
KM_PER_DEG_LAT = 111.32
Points = tuple[tuple[float, float], ...]


def _default_points(seed: int, hubs: int, spread_deg: float, n: int = 256) -> Points:
    """Clustered (lat, lon) points around Geneva; fixed seed so default() is a constant."""
    rng = np.random.default_rng(seed)
    hub_lat = CENTER_LAT + rng.normal(0.0, 0.03, hubs)
    hub_lon = CENTER_LON + rng.normal(0.0, 0.045, hubs)
    which = rng.integers(0, hubs, n)
    lat = hub_lat[which] + rng.normal(0.0, spread_deg, n)
    lon = hub_lon[which] + rng.normal(0.0, spread_deg * 1.4, n)
    return tuple((round(float(a), 6), round(float(b), 6)) for a, b in zip(lat, lon, strict=True))


def _default_rates() -> tuple[float, ...]:
    """A morning peak: 19 expected bookings between 07:00 and 09:00 UTC."""
    rates = [0.0] * 24
    rates[7], rates[8] = 9.0, 10.0
    return tuple(rates)


@dataclass(frozen=True)
class Scenario:
    """Parameters of the simulated world; every field is documented with its unit."""

    n_drivers: int = 9
    """Drivers in the fleet; every driver is a candidate for every booking."""
    bookings_per_episode: int = 19
    """Booking decisions per episode (one simulated shift)."""
    arrival_rate_by_hour: tuple[float, ...] = field(default_factory=_default_rates)
    """24 values: expected bookings decided in each UTC hour of one shift (shape of arrivals)."""
    shift_hours: float | None = None
    """Length of one episode's shift; None: an episode may use the whole day (the default)."""
    shift_start_by_hour: tuple[float, ...] | None = None
    """24 weights of the UTC hour a shift starts in (used with shift_hours; None: uniform)."""
    pickup_points: Points = field(default_factory=lambda: _default_points(11, 6, 0.02))
    """Historical pickup positions (lat, lon); bookings resample them with jitter."""
    dropoff_points: Points = field(default_factory=lambda: _default_points(12, 3, 0.01))
    """Historical drop-off positions (lat, lon) (hospitals, clinics, homes)."""
    location_jitter_km: float = 0.3
    """Standard deviation of the noise added to a resampled position, in km."""
    priority_mix: tuple[float, float, float] = (0.6, 0.3, 0.1)
    """Probability of priority 1 (routine), 2, 3 (urgent)."""
    lead_time_min: float = 5.0
    """Shortest time from decision to window start, in minutes."""
    lead_time_mean_extra_min: float = 15.0
    """Mean of the exponential lead time beyond `lead_time_min`, in minutes."""
    window_min: float = 15.0
    """Length of the pickup window, in minutes; arriving after its end is late."""
    travel_speed_kmh: float = 30.0
    """Average road speed over great-circle distance (calibrated, see fit)."""
    service_min: float = 8.0
    """Minutes a driver is busy at drop-off after the trip (handover, cleaning)."""
    unavailable_prob: float = 0.1
    """Chance a driver is unavailable (break, refuel) for one booking: ineligible."""
    equipped_share: float = 0.6
    """Share of drivers whose vehicle may serve urgent (priority 3) bookings."""
    initial_busy_max_min: float = 20.0
    """Drivers start free up to this many minutes before or busy up to after the first booking."""
    cancel_base: float = 0.01
    """Cancellation probability of a booking picked up on time."""
    cancel_per_delay_min: float = 0.01
    """Added cancellation probability per minute of pickup delay after window start."""
    cancel_max: float = 0.6
    """Upper bound of the cancellation probability."""

    def __post_init__(self) -> None:
        checks = {
            "n_drivers must be 1..64": 1 <= self.n_drivers <= 64,
            "bookings_per_episode must be positive": self.bookings_per_episode >= 1,
            "arrival_rate_by_hour needs 24 non-negative values with a positive sum": (
                len(self.arrival_rate_by_hour) == 24
                and min(self.arrival_rate_by_hour) >= 0
                and sum(self.arrival_rate_by_hour) > 0
            ),
            "shift_hours must be within (0, 24]": self.shift_hours is None
            or 0 < self.shift_hours <= 24,
            "shift_start_by_hour needs 24 non-negative values with a positive sum": (
                self.shift_start_by_hour is None
                or (
                    len(self.shift_start_by_hour) == 24
                    and min(self.shift_start_by_hour) >= 0
                    and sum(self.shift_start_by_hour) > 0
                )
            ),
            "pickup_points and dropoff_points must not be empty": bool(
                self.pickup_points and self.dropoff_points
            ),
            "priority_mix must be 3 non-negative values summing to 1": (
                len(self.priority_mix) == 3
                and min(self.priority_mix) >= 0
                and abs(sum(self.priority_mix) - 1.0) < 1e-6
            ),
            "travel_speed_kmh must be positive": self.travel_speed_kmh > 0,
            "times must be non-negative": min(
                self.lead_time_min,
                self.lead_time_mean_extra_min,
                self.window_min,
                self.service_min,
                self.initial_busy_max_min,
                self.location_jitter_km,
            )
            >= 0,
            "probabilities must be within [0, 1]": all(
                0.0 <= p <= 1.0
                for p in (
                    self.unavailable_prob,
                    self.equipped_share,
                    self.cancel_base,
                    self.cancel_max,
                )
            )
            and self.cancel_per_delay_min >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid scenario: {message}")

    @classmethod
    def default(cls) -> Scenario:
        """9 drivers, 19 bookings in a two-hour morning peak around Geneva."""
        return cls()

    @classmethod
    def seeded(cls, seed: int) -> Scenario:
        """The default world's shape with its pickup and drop-off hubs drawn from `seed`
        (0: the default world itself): `demo --seed` plays a different city."""
        if seed == 0:
            return cls()
        return cls(
            pickup_points=_default_points(11 + 1_000 * seed, 6, 0.02),
            dropoff_points=_default_points(12 + 1_000 * seed, 3, 0.01),
        )

    @classmethod
    def fit(cls, store: ReplayStore, window: TimeWindow, base: Scenario | None = None) -> Scenario:
        """Calibrate from stored events; see `dispatchloop.sim.calibration` for the estimators.

        Beyond MAX_FIT_EVENTS events in the window, a spread-out sample feeds the
        estimators (episodes are still counted over all), so memory stays bounded.
        """
        from dispatchloop.sim.calibration import (  # noqa: PLC0415 - avoids a cycle
            MAX_FIT_EVENTS,
            fit_events,
        )

        every = max(1, -(-store.count_events(window) // MAX_FIT_EVENTS))
        return fit_events(store.iter_events(window), base or cls.default(), every=every)

    # --- serialisation -------------------------------------------------------------------

    def candidate_slots(self, requested: int | None = None) -> int:
        """Candidate rows of an observation: the fleet, or more (padding) when requested."""
        slots = requested or self.n_drivers
        if slots < self.n_drivers:
            raise ValueError(f"max_candidates {slots} is below the fleet of {self.n_drivers}")
        return slots

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown scenario field {unknown[0]!r}")
        values = {key: _tupled(value) for key, value in data.items()}
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def fingerprint(self) -> str:
        """sha256 of the parameters (canonical JSON): same fingerprint, same world.

        Decision records carry it, so a verdict can be traced to the exact world it
        was reached in; floats are written by `repr`, so equal parameters hash equal.
        """
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_json_file(cls, path: Path) -> Scenario:
        return cls.from_dict(json.loads(path.read_text()))

    # --- arrays the simulator samples from (computed once per scenario) -------------------

    @cached_property
    def arrays(self) -> ScenarioArrays:
        pickups = np.asarray(self.pickup_points, dtype=np.float64)
        dropoffs = np.asarray(self.dropoff_points, dtype=np.float64)
        rates = np.asarray(self.arrival_rate_by_hour, dtype=np.float64)
        return ScenarioArrays(
            pickups=pickups,
            dropoffs=dropoffs,
            all_points=np.concatenate([pickups, dropoffs]),
            hour_p=rates / rates.sum(),
            rates=rates,
            start_p=np.asarray(self.shift_start_by_hour or (1.0,) * 24, dtype=np.float64)
            / float(sum(self.shift_start_by_hour or (1.0,) * 24)),
            priority_p=np.asarray(self.priority_mix, dtype=np.float64)
            / float(sum(self.priority_mix)),
            demand=demand_map(pickups),
        )


@dataclass(frozen=True)
class ScenarioArrays:
    pickups: NDArray[np.float64]
    dropoffs: NDArray[np.float64]
    all_points: NDArray[np.float64]
    hour_p: NDArray[np.float64]
    rates: NDArray[np.float64]
    start_p: NDArray[np.float64]
    priority_p: NDArray[np.float64]
    demand: DemandMap
    """The featurizer's demand map of this world (from its historical pickups)."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _tupled(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
