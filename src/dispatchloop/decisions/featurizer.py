"""Turns a decision situation into per-candidate features plus context features.

One featurizer for the simulator, for logged events and for serving: both the
env and `situation_from_event` build a `Situation`, and `featurize` is the only
code that turns it into numbers. The Q-network scores each candidate row with
shared weights, so the number of candidates is free (9 in training, 40 in
serving). Change the arithmetic here and you must bump FEATURIZER_VERSION: it is
stored with every model, and a model refuses features of another version.

Besides the situation, the featurizer takes the world's demand map: up to
DEMAND_POINTS historical pickup positions (`demand_map`). The coverage features
say how much the fleet's reach to where bookings come from would suffer if a
candidate were taken: what separates a driver worth keeping free from an
equally close one that is not (version 2: on TEST episodes they raised the
share of the greedy→hindsight gap the DQN closes from 19 to 23 % in the
store-calibrated world and from 33 to 36 % in the default one).
The map belongs to the world, not to the model: the simulator takes it from its
scenario, offline training from the scenario it trains in, and a model's
card carries that scenario, so `demand_map(card.scenario["pickup_points"])`
rebuilds it for serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.events import Booking, Candidate, DecideRequest, DispatchOutcomeEvent
from dispatchloop.screening import BookingStruct, CandidateStruct, ScreenedDecideRequest

FEATURIZER_VERSION = 2
DEMAND_POINTS = 64
"""Historical pickups in a demand map: enough to describe hubs, cheap per decision."""
EARTH_RADIUS_KM = 6371.0088
KM_PER_DEG = EARTH_RADIUS_KM * np.pi / 180.0
REFERENCE_SPEED_KMH = 30.0
"""Speed used only to turn distance into a comparable ETA feature; the simulator's
calibrated speed is a property of the world, this one of the featurizer."""

CANDIDATE_FEATURES = (
    "pickup_km",
    "available_in_h",
    "eta_h",
    "eta_minus_best_h",
    "eta_rank",
    "queue_len",
    "late_by_h",
    "early_by_h",
    "eligible",
    "coverage_loss_km",
    "covered_share",
    "mean_km_to_demand",
)
CONTEXT_FEATURES = (
    "priority_1",
    "priority_2",
    "priority_3",
    "hour_sin",
    "hour_cos",
    "trip_km",
    "to_window_start_h",
    "window_len_h",
    "n_candidates",
    "eligible_share",
)
N_CANDIDATE_FEATURES = len(CANDIDATE_FEATURES)
N_CONTEXT_FEATURES = len(CONTEXT_FEATURES)
FloatArray = NDArray[np.float32]
DemandMap = NDArray[np.float64]
"""(P, 2) pickup positions (lat, lon) of a world, from `demand_map`."""


class Situation(NamedTuple):
    """Everything a decision may look at, as plain arrays (times in minutes)."""

    hour_of_day: float
    priority: int
    pickup_lat: float
    pickup_lon: float
    dropoff_lat: float
    dropoff_lon: float
    to_window_start_min: float
    to_window_end_min: float
    driver_lat: NDArray[np.float64]
    driver_lon: NDArray[np.float64]
    available_in_min: NDArray[np.float64]
    queue_len: NDArray[np.float64]
    eligible: NDArray[np.bool_]


class Features(NamedTuple):
    candidates: FloatArray  # (n_candidates, N_CANDIDATE_FEATURES)
    context: FloatArray  # (N_CONTEXT_FEATURES,)
    mask: NDArray[np.bool_]  # (n_candidates,), True where the driver may be chosen


def distance_km(
    lat1: NDArray[np.float64] | float,
    lon1: NDArray[np.float64] | float,
    lat2: NDArray[np.float64] | float,
    lon2: NDArray[np.float64] | float,
) -> NDArray[np.float64]:
    """Great-circle (haversine) distance; the simulator uses the same function."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = phi2 - phi1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    # np.clip(h, 0, 1) is minimum(maximum(h, 0), 1), NaN kept; its Python wrapper cost
    # more than the arithmetic on a decision's 40 drivers. Same bits.
    h = np.minimum(np.maximum(h, 0.0), 1.0)
    return np.asarray(2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(h)))


def demand_map(pickup_points: Sequence[Sequence[float]] | NDArray[np.float64]) -> DemandMap:
    """The demand map of a world: at most DEMAND_POINTS of its historical pickups (lat, lon).

    Evenly spaced through the list, so the same history always gives the same map.
    """
    points = np.asarray(pickup_points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        raise ValueError("a demand map needs at least one pickup position")
    chosen = np.unique(np.linspace(0, len(points) - 1, min(len(points), DEMAND_POINTS)).astype(int))
    return np.asarray(points[chosen], dtype=np.float64)


class _Projection(NamedTuple):
    lat0: np.float64
    lon0: np.float64
    east: np.float64
    demand_x: NDArray[np.float32]
    demand_y: NDArray[np.float32]


_PROJECTIONS: dict[bytes, _Projection] = {}
_MAX_PROJECTIONS = 16


def _projection(demand: DemandMap) -> _Projection:
    """The demand map in kilometres east/north of its centre, computed once per map.

    A served model featurizes every request against the same map; the projection
    (seven NumPy calls) was a tenth of `_coverage`. Keyed by the map's bytes, not its
    identity, so a map changed in place or a new map at a freed address is never
    mistaken for another: the numbers are exactly those computed afresh.
    float32 from here on (half the memory traffic of the (B, n, P) arrays; the
    features are float32 anyway)."""
    key = demand.tobytes() + str(demand.shape).encode()
    found = _PROJECTIONS.get(key)
    if found is not None:
        return found
    lat0, lon0 = demand.mean(axis=0)
    east = np.cos(np.radians(lat0)) * KM_PER_DEG
    demand_x = ((demand[:, 1] - lon0) * east).astype(np.float32)
    demand_y = ((demand[:, 0] - lat0) * KM_PER_DEG).astype(np.float32)
    demand_x.flags.writeable = demand_y.flags.writeable = False
    if len(_PROJECTIONS) >= _MAX_PROJECTIONS:  # a simulator sweeping worlds: start over
        _PROJECTIONS.clear()
    projection = _Projection(lat0, lon0, east, demand_x, demand_y)
    _PROJECTIONS[key] = projection
    return projection


def _coverage(
    driver_lat: NDArray[np.float64],
    driver_lon: NDArray[np.float64],
    available_in_min: NDArray[np.float64],
    demand: DemandMap,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per driver (B, n): coverage loss (km), share of demand points it is nearest to, mean km.

    A driver's reach to a demand point is its distance plus the distance it could
    have driven while still busy (at the reference speed). The coverage loss of
    driver i is the sum, over the demand points it reaches first, of how much
    farther the next driver is, divided by the number of points: what taking i
    away costs the fleet's reach. Shared by `featurize` and `featurize_batch` so
    both give identical numbers. Distances are equirectangular (off by well under
    1 % at city scale): this runs on every simulator step, for every driver and
    demand point, and haversine made the vectorised env 4x slower.
    """
    size, n = driver_lat.shape
    points = len(demand)
    lat0, lon0, east, demand_x, demand_y = _projection(demand)
    dx = ((driver_lon - lon0) * east).astype(np.float32)[..., None] - demand_x
    dy = ((driver_lat - lat0) * KM_PER_DEG).astype(np.float32)[..., None] - demand_y
    km = np.sqrt(dx * dx + dy * dy)  # (B, n, P)
    busy_km = (available_in_min * (REFERENCE_SPEED_KMH / 60.0)).astype(np.float32)
    reach = km + busy_km[..., None]
    nearest = reach.argmin(axis=1)  # (B, P)
    rows, cols = np.arange(size)[:, None], np.arange(points)[None, :]
    first = reach[rows, nearest, cols]
    if n > 1:
        reach[rows, nearest, cols] = np.inf
        margin = reach.min(axis=1) - first
    else:
        margin = np.zeros_like(first)
    owner = (rows * n + nearest).ravel()
    loss = np.bincount(owner, weights=margin.ravel(), minlength=size * n) / points
    share = np.bincount(owner, minlength=size * n) / points
    # km.mean(axis=2, dtype=float64) without its Python wrapper: the same float64 sum
    # (add.reduce, pairwise) divided by the same count, so the same bits.
    mean_km = np.add.reduce(km, axis=2, dtype=np.float64) / points
    return loss.reshape(size, n), share.reshape(size, n), mean_km


def featurize(situation: Situation, demand: DemandMap) -> Features:
    s = situation
    n = len(s.driver_lat)
    pickup_km, trip_km = _pickup_and_trip_km(s)
    eta_min = s.available_in_min + pickup_km / REFERENCE_SPEED_KMH * 60.0
    # The eligible drivers' least ETA (min is exact, so the same float as indexing first),
    # else everyone's; methods, not np.argsort: its Python wrapper cost as much as the sort.
    best = eta_min.min(where=s.eligible, initial=np.inf)
    if best == np.inf and not s.eligible.any():
        best = eta_min.min()
    rank = eta_min.argsort(kind="stable").argsort(kind="stable")
    candidates = np.empty((n, N_CANDIDATE_FEATURES), dtype=np.float32)
    candidates[:, 0] = pickup_km / 10.0
    candidates[:, 1] = s.available_in_min / 60.0
    candidates[:, 2] = eta_min / 60.0
    candidates[:, 3] = (eta_min - best) / 60.0
    candidates[:, 4] = rank / max(n - 1, 1)
    candidates[:, 5] = s.queue_len / 5.0
    candidates[:, 6] = np.maximum(eta_min - s.to_window_end_min, 0.0) / 60.0
    candidates[:, 7] = np.maximum(s.to_window_start_min - eta_min, 0.0) / 60.0
    candidates[:, 8] = s.eligible
    loss, share, mean_km = _coverage(
        s.driver_lat[None], s.driver_lon[None], s.available_in_min[None], demand
    )
    candidates[:, 9] = loss[0] / 10.0
    candidates[:, 10] = share[0]
    candidates[:, 11] = mean_km[0] / 10.0
    angle = 2 * np.pi * s.hour_of_day / 24.0
    context = np.array(
        [
            s.priority == 1,
            s.priority == 2,
            s.priority == 3,
            np.sin(angle),
            np.cos(angle),
            trip_km / 10.0,
            s.to_window_start_min / 60.0,
            (s.to_window_end_min - s.to_window_start_min) / 60.0,
            n / 64.0,
            np.count_nonzero(s.eligible) / n,  # eligible.mean(): the same float64 quotient
        ],
        dtype=np.float32,
    )
    return Features(candidates, context, s.eligible.copy())


def _pickup_and_trip_km(s: Situation) -> tuple[NDArray[np.float64], float]:
    """Each driver's km to the pickup (n,), and the trip's km, in one haversine call.

    The same elementwise arithmetic as a call per pair (a broadcast pickup is the same
    values), so the same bits: `featurize_batch` broadcasts that way and tests hold the
    two equal. One call instead of two, and no NumPy scalar arithmetic (each scalar
    operation costs a call): a sixth of `featurize` on 40 candidates."""
    n = len(s.driver_lat)
    ends = np.empty((4, n + 1), dtype=np.float64)
    ends[0, :n], ends[1, :n] = s.driver_lat, s.driver_lon
    ends[2, :n], ends[3, :n] = s.pickup_lat, s.pickup_lon
    ends[:, n] = s.pickup_lat, s.pickup_lon, s.dropoff_lat, s.dropoff_lon
    km = distance_km(ends[0], ends[1], ends[2], ends[3])
    return km[:n], float(km[n])


def situation_from_event(event: DispatchOutcomeEvent) -> Situation:
    """The situation a logged decision was taken in, at its decided_at."""
    return situation_from_decision(event.decided_at, event.booking, event.candidates)


def situation_from_decision(
    decided: datetime, booking: Booking, cands: Sequence[Candidate]
) -> Situation:
    """The situation of a decision to take now (serving) or taken then (a logged event).

    One function for both, so a served decision and its logged event featurize alike."""
    return _situation(decided, booking.window_start, booking.window_end, booking, cands)


def situation_from_screened(request: ScreenedDecideRequest) -> Situation:
    """`situation_from_decision` of a request serving screened without the models.

    The same arithmetic on the same values (the structs mirror the models, and the
    timestamps are parsed alike): tests check that both give equal situations."""
    booking = request.booking
    return _situation(
        request.decided_at, request.window_start, request.window_end, booking, request.candidates
    )


def situation_from_request(request: DecideRequest | ScreenedDecideRequest) -> Situation:
    """The situation of a serving request, whichever path validated it."""
    if isinstance(request, ScreenedDecideRequest):
        return situation_from_screened(request)
    return situation_from_decision(request.decided_at, request.booking, request.candidates)


def _situation(
    decided: datetime,
    window_start: datetime,
    window_end: datetime,
    booking: Booking | BookingStruct,
    cands: Sequence[Candidate] | Sequence[CandidateStruct],
) -> Situation:
    hour = decided.hour + decided.minute / 60.0 + decided.second / 3600.0
    utc_offset = decided.utcoffset()
    assert utc_offset is not None  # AwareDatetime
    hour = (hour - utc_offset.total_seconds() / 3600.0) % 24.0
    # One pass over the candidates, then one contiguous float64 row per column: the same
    # values as one np.array per column (ints and floats alike), in a fifth of the calls.
    columns = (
        np.array(
            [v for c in cands for v in (c.lat, c.lon, c.available_in_min, c.queue_len)],
            dtype=np.float64,
        )
        .reshape(-1, 4)
        .T.copy()
    )
    return Situation(
        hour_of_day=hour,
        priority=booking.priority,
        pickup_lat=booking.pickup.lat,
        pickup_lon=booking.pickup.lon,
        dropoff_lat=booking.dropoff.lat,
        dropoff_lon=booking.dropoff.lon,
        to_window_start_min=(window_start - decided).total_seconds() / 60.0,
        to_window_end_min=(window_end - decided).total_seconds() / 60.0,
        driver_lat=columns[0],
        driver_lon=columns[1],
        available_in_min=columns[2],
        queue_len=columns[3],
        eligible=np.array([c.eligible for c in cands], dtype=np.bool_),
    )


class SituationBatch(NamedTuple):
    """`Situation` stacked over a leading batch axis (B,), drivers on a second axis (B, n).

    The simulator's vectorised path builds it; `featurize_batch` must give exactly
    the numbers `featurize` gives row by row (tested), so it repeats the same
    arithmetic in the same order, only along the last axis.
    """

    hour_of_day: NDArray[np.float64]
    priority: NDArray[np.int64]
    pickup_lat: NDArray[np.float64]
    pickup_lon: NDArray[np.float64]
    dropoff_lat: NDArray[np.float64]
    dropoff_lon: NDArray[np.float64]
    to_window_start_min: NDArray[np.float64]
    to_window_end_min: NDArray[np.float64]
    driver_lat: NDArray[np.float64]
    driver_lon: NDArray[np.float64]
    available_in_min: NDArray[np.float64]
    queue_len: NDArray[np.float64]
    eligible: NDArray[np.bool_]


def stack_situations(situations: Sequence[Situation]) -> SituationBatch:
    """Situations with the same number of candidates as one batch for `featurize_batch`."""
    return SituationBatch(*(np.asarray(column) for column in zip(*situations, strict=True)))


def _pickup_km_and_eta_min(
    s: SituationBatch,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    pickup_km = distance_km(
        s.driver_lat, s.driver_lon, s.pickup_lat[:, None], s.pickup_lon[:, None]
    )
    return pickup_km, s.available_in_min + pickup_km / REFERENCE_SPEED_KMH * 60.0


def eta_h_batch(batch: SituationBatch) -> NDArray[np.float32]:
    """The `eta_h` column of `featurize_batch` alone: what greedy ranks by.

    The planners' greedy continuations need only this column; the full features
    (coverage against the demand map above all) would cost them 3x the time.
    """
    return (_pickup_km_and_eta_min(batch)[1] / 60.0).astype(np.float32)


def featurize_batch(batch: SituationBatch, demand: DemandMap) -> Features:
    """Vectorised `featurize`: candidates (B, n, F), context (B, C), mask (B, n)."""
    s = batch
    size, n = s.driver_lat.shape
    pickup_km, eta_min = _pickup_km_and_eta_min(s)
    any_eligible = s.eligible.any(axis=1)
    best_eligible = np.where(s.eligible, eta_min, np.inf).min(axis=1)
    best = np.where(any_eligible, best_eligible, eta_min.min(axis=1))[:, None]
    rank = np.argsort(np.argsort(eta_min, axis=1, kind="stable"), axis=1, kind="stable")
    candidates = np.empty((size, n, N_CANDIDATE_FEATURES), dtype=np.float32)
    candidates[..., 0] = pickup_km / 10.0
    candidates[..., 1] = s.available_in_min / 60.0
    candidates[..., 2] = eta_min / 60.0
    candidates[..., 3] = (eta_min - best) / 60.0
    candidates[..., 4] = rank / max(n - 1, 1)
    candidates[..., 5] = s.queue_len / 5.0
    candidates[..., 6] = np.maximum(eta_min - s.to_window_end_min[:, None], 0.0) / 60.0
    candidates[..., 7] = np.maximum(s.to_window_start_min[:, None] - eta_min, 0.0) / 60.0
    candidates[..., 8] = s.eligible
    loss, share, mean_km = _coverage(s.driver_lat, s.driver_lon, s.available_in_min, demand)
    candidates[..., 9] = loss / 10.0
    candidates[..., 10] = share
    candidates[..., 11] = mean_km / 10.0
    trip_km = distance_km(s.pickup_lat, s.pickup_lon, s.dropoff_lat, s.dropoff_lon)
    angle = 2 * np.pi * s.hour_of_day / 24.0
    context = np.empty((size, N_CONTEXT_FEATURES), dtype=np.float32)
    context[:, 0] = s.priority == 1
    context[:, 1] = s.priority == 2
    context[:, 2] = s.priority == 3
    context[:, 3] = np.sin(angle)
    context[:, 4] = np.cos(angle)
    context[:, 5] = trip_km / 10.0
    context[:, 6] = s.to_window_start_min / 60.0
    context[:, 7] = (s.to_window_end_min - s.to_window_start_min) / 60.0
    context[:, 8] = n / 64.0
    context[:, 9] = s.eligible.mean(axis=1)
    return Features(candidates, context, s.eligible.copy())
