"""The simulator's physics, batched over episodes: one code path for every env.

Why one batched core: `DispatchEnv` (one episode) and `VecDispatchEnv` (many)
must give identical results per seed. Both run the functions below; the single
env simply runs a batch of one. The hindsight planner runs them too, to replay
candidate assignment sequences exactly.

World rules (times are whole seconds since midnight UTC of the simulated day,
rounded after every computation so that logged timestamps reproduce them exactly):

- Everything random about an episode is drawn at reset into an `EpisodePlan`:
  bookings (decision time, window, priority, pickup, drop-off), who is eligible
  for which booking (random unavailability; urgent bookings need an equipped
  vehicle), the initial fleet, and one uniform per booking for cancellation.
- A driver is described by where and when it becomes free: the drop-off of its
  last assigned job. A busy driver queues new jobs (`queue_len` = assigned jobs
  not finished at decision time). Candidates report that free-at position.
- Assigning booking k to driver d: the driver leaves when free (or now), drives
  `empty_km` (great-circle) at the scenario speed to the pickup, and waits for the
  window start. `pickup_delay_min` = arrival − window start (negative = early).
  Cancelled with probability min(base + per_min · max(delay, 0), max) (the
  plan's uniform decides); otherwise late if arrival > window end. A cancelled
  job frees the driver at the pickup on arrival; a served one after the trip
  and the service time at the drop-off.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtri

from dispatchloop.decisions.featurizer import SituationBatch, distance_km
from dispatchloop.decisions.reward import STATUS_CODES, outcome_rewards
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import KM_PER_DEG_LAT, Scenario

COMPLETED, LATE, CANCELLED = (
    STATUS_CODES["completed"],
    STATUS_CODES["late"],
    STATUS_CODES["cancelled"],
)
STATUS_NAMES = tuple(sorted(STATUS_CODES, key=STATUS_CODES.__getitem__))  # by code
F64 = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class EpisodePlan:
    """One episode drawn in advance: B bookings, D drivers (arrays, times in seconds).

    With a leading axis (N, B) / (N, D) the same class holds a batch of plans.
    `DispatchEnv.plan` also attaches the scenario and reward weights, so a
    planner given the plan can replay decisions exactly.
    """

    decided_s: F64  # (B,) sorted decision times
    window_start_s: F64
    window_end_s: F64
    priority: NDArray[np.int64]
    pickup_lat: F64
    pickup_lon: F64
    dropoff_lat: F64
    dropoff_lon: F64
    eligible: NDArray[np.bool_]  # (B, D)
    cancel_u: F64  # (B,) uniform draws deciding cancellation
    driver_lat: F64  # (D,) initial positions
    driver_lon: F64
    driver_free_s: F64  # (D,) when each driver finishes its initial job
    scenario: Scenario | None = None  # the world rules, attached by DispatchEnv.plan
    reward: RewardSettings | None = None

    @property
    def n_bookings(self) -> int:
        return int(self.decided_s.shape[-1])

    @property
    def n_drivers(self) -> int:
        return int(self.driver_lat.shape[-1])


PLAN_FIELDS = tuple(
    f.name for f in dataclasses.fields(EpisodePlan) if f.name not in ("scenario", "reward")
)


def stack_plans(plans: list[EpisodePlan]) -> EpisodePlan:
    """A batch of plans (leading axis N) from single plans."""
    arrays: dict[str, Any] = {
        name: np.stack([getattr(p, name) for p in plans]) for name in PLAN_FIELDS
    }
    return EpisodePlan(**arrays)


def plan_row(batch: EpisodePlan, index: int) -> EpisodePlan:
    """Plan `index` of a batch (copies, so the batch may be overwritten later)."""
    arrays: dict[str, Any] = {name: getattr(batch, name)[index].copy() for name in PLAN_FIELDS}
    return EpisodePlan(**arrays)


def draw_uniforms(scenario: Scenario, rng: np.random.Generator) -> F64:
    """All randomness of one episode: one call to the env's Generator.

    Drawing one flat vector per episode (and transforming many episodes' vectors
    together in `plans_from_uniforms`) is what makes autoreset cheap in the
    vector env; the layout below is part of the seed contract: keep it.
    """
    return rng.random(_layout(scenario.bookings_per_episode, scenario.n_drivers).size)


def make_plan(scenario: Scenario, rng: np.random.Generator) -> EpisodePlan:
    """Draw one episode from the env's Generator."""
    return plan_row(plans_from_uniforms(scenario, draw_uniforms(scenario, rng)[None, :]), 0)


class _Layout:
    """Where each random quantity sits in an episode's uniform vector."""

    def __init__(self, n_b: int, n_d: int) -> None:
        sizes = {
            "shift_start": 2,  # hour, fraction of the hour
            "hour": n_b,
            "second": n_b,
            "lead": n_b,
            "priority": n_b,
            "pickup": 3 * n_b,  # point index, two jitter normals
            "dropoff": 3 * n_b,
            "available": n_b * n_d,
            "equipped": n_d,  # a random order of drivers
            "cancel": n_b,
            "driver": 3 * n_d,
            "free": n_d,
        }
        self.slices: dict[str, slice] = {}
        offset = 0
        for name, size in sizes.items():
            self.slices[name] = slice(offset, offset + size)
            offset += size
        self.size = offset


@functools.lru_cache(maxsize=64)
def _layout(n_b: int, n_d: int) -> _Layout:
    return _Layout(n_b, n_d)


def plans_from_uniforms(scenario: Scenario, uniforms: F64) -> EpisodePlan:
    """Turn (N, layout.size) uniforms into N episode plans, all at once (inverse CDFs)."""
    arrays = scenario.arrays
    n, n_b, n_d = len(uniforms), scenario.bookings_per_episode, scenario.n_drivers
    part = {name: uniforms[:, sl] for name, sl in _layout(n_b, n_d).slices.items()}
    decided = np.sort(np.round(_decision_hours(scenario, part) * 3600.0), axis=1)
    lead_min = scenario.lead_time_min + scenario.lead_time_mean_extra_min * -np.log1p(-part["lead"])
    window_start = decided + np.round(lead_min * 60.0)
    window_end = window_start + round(scenario.window_min * 60.0)
    priority = _categorical(part["priority"], arrays.priority_p) + 1
    jitter = scenario.location_jitter_km
    p_lat, p_lon = _resample(part["pickup"].reshape(n, 3, n_b), arrays.pickups, jitter)
    d_lat, d_lon = _resample(part["dropoff"].reshape(n, 3, n_b), arrays.dropoffs, jitter)
    f_lat, f_lon = _resample(part["driver"].reshape(n, 3, n_d), arrays.all_points, jitter)
    eligible = _eligibility(
        part["available"].reshape(n, n_b, n_d), part["equipped"], scenario, priority
    )
    offset_min = scenario.initial_busy_max_min * (2.0 * part["free"] - 1.0)
    return EpisodePlan(
        decided_s=decided,
        window_start_s=window_start,
        window_end_s=window_end,
        priority=priority,
        pickup_lat=p_lat,
        pickup_lon=p_lon,
        dropoff_lat=d_lat,
        dropoff_lon=d_lon,
        eligible=eligible,
        cancel_u=part["cancel"].copy(),
        driver_lat=f_lat,
        driver_lon=f_lon,
        driver_free_s=decided[:, :1] + np.round(offset_min * 60.0),
    )


def _decision_hours(scenario: Scenario, part: dict[str, F64]) -> F64:
    """Decision times in hours since midnight of the episode's day (may pass 24 in a shift)."""
    arrays = scenario.arrays
    if scenario.shift_hours is None:
        hours = _categorical(part["hour"], arrays.hour_p) + part["second"]
        return np.asarray(np.minimum(hours, 86_399.0 / 3600.0), dtype=np.float64)
    start = _categorical(part["shift_start"][:, :1], arrays.start_p) + part["shift_start"][:, 1:]
    end = start + scenario.shift_hours
    slot = np.floor(start) + np.arange(int(np.ceil(scenario.shift_hours)) + 1)  # (N, H)
    low, high = np.maximum(slot, start), np.minimum(slot + 1.0, end)
    length = np.maximum(high - low, 0.0)
    weight = arrays.rates[slot.astype(np.int64) % 24] * length
    weight = np.where(weight.sum(axis=1, keepdims=True) > 0, weight, length)  # a quiet shift
    cdf = np.cumsum(weight, axis=1)
    target = part["hour"] * cdf[:, -1:]  # (N, B)
    chosen = np.minimum((cdf[:, None, :] <= target[:, :, None]).sum(axis=2), slot.shape[1] - 1)
    rows = np.arange(len(start))[:, None]
    return np.asarray(low[rows, chosen] + part["second"] * length[rows, chosen], dtype=np.float64)


def _categorical(u: F64, p: F64) -> NDArray[np.int64]:
    """Index i with probability p[i] (inverse CDF)."""
    cdf = np.cumsum(p)
    index = np.searchsorted(cdf, u * cdf[-1], side="right")
    return np.asarray(np.minimum(index, len(p) - 1), dtype=np.int64)


def _resample(u: F64, points: F64, jitter_km: float) -> tuple[F64, F64]:
    """Historical positions with Gaussian jitter (km converted to degrees locally).

    u has shape (N, 3, n): point choice, then two uniforms turned into normals.
    """
    chosen = points[np.minimum((u[:, 0] * len(points)).astype(np.int64), len(points) - 1)]
    noise = jitter_km * ndtri(np.clip(u[:, 1:], 1e-12, 1.0 - 1e-12))
    lat = chosen[..., 0] + noise[:, 0] / KM_PER_DEG_LAT
    lon = chosen[..., 1] + noise[:, 1] / (KM_PER_DEG_LAT * np.cos(np.radians(chosen[..., 0])))
    return np.clip(lat, -89.0, 89.0), np.clip(lon, -179.0, 179.0)


def _eligibility(
    u_available: F64, u_order: F64, scenario: Scenario, priority: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Random unavailability plus the vehicle rule; never a booking without a driver."""
    n_d = u_available.shape[2]
    available = u_available >= scenario.unavailable_prob
    order = np.argsort(u_order, axis=1)
    rank = np.argsort(order, axis=1)
    equipped = rank < max(1, round(scenario.equipped_share * n_d))  # (N, D)
    eligible = available & ((priority[:, :, None] < 3) | equipped[:, None, :])
    stranded = ~eligible.any(axis=2)  # (N, B)
    first = order[:, 0]  # always equipped
    eligible[stranded, first[np.nonzero(stranded)[0]]] = True
    return np.asarray(eligible, dtype=np.bool_)


class FleetState(NamedTuple):
    """Mutable per-episode state of a batch of N episodes with D drivers, B bookings."""

    free_s: F64  # (N, D) when each driver finishes everything assigned so far
    lat: F64  # (N, D) where it will be then
    lon: F64
    job_end_s: F64  # (N, D, B + 1) end of each assigned job (slot 0: initial job), -inf if none

    @classmethod
    def start(cls, plans: EpisodePlan) -> FleetState:
        n, d = plans.driver_lat.shape
        job_end = np.full((n, d, plans.n_bookings + 1), -np.inf)
        job_end[:, :, 0] = plans.driver_free_s
        return cls(
            plans.driver_free_s.copy(), plans.driver_lat.copy(), plans.driver_lon.copy(), job_end
        )

    def reset_row(self, index: int, plan: EpisodePlan) -> None:
        self.free_s[index] = plan.driver_free_s
        self.lat[index] = plan.driver_lat
        self.lon[index] = plan.driver_lon
        self.job_end_s[index] = -np.inf
        self.job_end_s[index, :, 0] = plan.driver_free_s


class Outcomes(NamedTuple):
    """What came of one decision per episode (arrays of shape (N,))."""

    status: NDArray[np.int64]
    pickup_delay_min: F64
    empty_km: F64
    total_km: F64
    occurred_s: F64
    end_s: F64
    end_lat: F64
    end_lon: F64


def situation_batch(
    state: FleetState, plans: EpisodePlan, step: NDArray[np.int64]
) -> SituationBatch:
    """The decision situation of booking `step[i]` in each episode i."""
    rows = np.arange(len(step))
    now = plans.decided_s[rows, step]
    hours, rest = np.divmod(now % 86_400.0, 3600.0)  # a shift may run past midnight
    minutes, seconds = np.divmod(rest, 60.0)
    # Same arithmetic as situation_from_event on the logged timestamp.
    hour_of_day = (hours + minutes / 60.0 + seconds / 3600.0 - 0.0) % 24.0
    queue = (state.job_end_s > now[:, None, None]).sum(axis=2).astype(np.float64)
    return SituationBatch(
        hour_of_day=hour_of_day,
        priority=plans.priority[rows, step],
        pickup_lat=plans.pickup_lat[rows, step],
        pickup_lon=plans.pickup_lon[rows, step],
        dropoff_lat=plans.dropoff_lat[rows, step],
        dropoff_lon=plans.dropoff_lon[rows, step],
        to_window_start_min=(plans.window_start_s[rows, step] - now) / 60.0,
        to_window_end_min=(plans.window_end_s[rows, step] - now) / 60.0,
        driver_lat=state.lat.copy(),
        driver_lon=state.lon.copy(),
        available_in_min=np.maximum(state.free_s - now[:, None], 0.0) / 60.0,
        queue_len=queue,
        eligible=plans.eligible[rows, step],
    )


def outcomes_of(
    scenario: Scenario,
    plans: EpisodePlan,
    rows: NDArray[np.int64],
    step: NDArray[np.int64],
    *,
    free_s: F64,
    lat: F64,
    lon: F64,
) -> Outcomes:
    """Outcome of booking step[i] of plan rows[i] for a driver free at free_s[i] at (lat, lon).

    Pure: used both to apply a decision and by the planner to preview one.
    """
    now = plans.decided_s[rows, step]
    p_lat, p_lon = plans.pickup_lat[rows, step], plans.pickup_lon[rows, step]
    d_lat, d_lon = plans.dropoff_lat[rows, step], plans.dropoff_lon[rows, step]
    window_start = plans.window_start_s[rows, step]
    empty_km = distance_km(lat, lon, p_lat, p_lon)
    arrival = np.round(np.maximum(free_s, now) + empty_km / scenario.travel_speed_kmh * 3600.0)
    delay_min = (arrival - window_start) / 60.0
    p_cancel = np.minimum(
        scenario.cancel_base + scenario.cancel_per_delay_min * np.maximum(delay_min, 0.0),
        scenario.cancel_max,
    )
    cancelled = plans.cancel_u[rows, step] < p_cancel
    late = arrival > plans.window_end_s[rows, step]
    trip_km = distance_km(p_lat, p_lon, d_lat, d_lon)
    served_end = (
        np.maximum(arrival, window_start)
        + np.round(trip_km / scenario.travel_speed_kmh * 3600.0)
        + round(scenario.service_min * 60.0)
    )
    end = np.where(cancelled, arrival, served_end)
    status = np.where(cancelled, CANCELLED, np.where(late, LATE, COMPLETED)).astype(np.int64)
    return Outcomes(
        status=status,
        pickup_delay_min=delay_min,
        empty_km=empty_km,
        total_km=np.where(cancelled, empty_km, empty_km + trip_km),
        occurred_s=end,
        end_s=end,
        end_lat=np.where(cancelled, p_lat, d_lat),
        end_lon=np.where(cancelled, p_lon, d_lon),
    )


def apply_decisions(
    scenario: Scenario,
    state: FleetState,
    plans: EpisodePlan,
    step: NDArray[np.int64],
    actions: NDArray[np.int64],
) -> Outcomes:
    """Assign booking step[i] to driver actions[i] in every episode; updates `state`."""
    rows = np.arange(len(step))
    out = outcomes_of(
        scenario,
        plans,
        rows,
        step,
        free_s=state.free_s[rows, actions],
        lat=state.lat[rows, actions],
        lon=state.lon[rows, actions],
    )
    state.free_s[rows, actions] = out.end_s
    state.lat[rows, actions] = out.end_lat
    state.lon[rows, actions] = out.end_lon
    state.job_end_s[rows, actions, step + 1] = out.end_s
    return out


def rewards_of(out: Outcomes, priority: NDArray[np.int64], reward: RewardSettings) -> F64:
    """The shared reward function on a batch of outcomes."""
    return outcome_rewards(out.status, out.pickup_delay_min, out.empty_km, priority, reward)
