"""Exact replays of assignment sequences, for the planners (`HindsightPolicy`, `RolloutPolicy`).

Kept apart from policies.py so the policy classes stay short; everything here
runs the simulator's own batched physics, so a replayed return is the return
the env would give.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from dispatchloop.decisions.featurizer import eta_h_batch
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import (
    PLAN_FIELDS,
    EpisodePlan,
    FleetState,
    apply_decisions,
    draw_uniforms,
    outcomes_of,
    plans_from_uniforms,
    rewards_of,
    situation_batch,
    stack_plans,
)
from dispatchloop.sim.scenario import Scenario

INELIGIBLE_COST = 1e9
BOOKING_FIELDS = (
    "decided_s",
    "window_start_s",
    "window_end_s",
    "priority",
    "pickup_lat",
    "pickup_lon",
    "dropoff_lat",
    "dropoff_lon",
    "eligible",
    "cancel_u",
)
"""The per-booking arrays of an EpisodePlan (axis -1 or -2 is the booking)."""


def plan_sequence(plan: EpisodePlan, lookahead: int, improve_passes: int) -> NDArray[np.int64]:
    """The best assignment sequence found for one episode (see HindsightPolicy)."""
    assert plan.scenario is not None and plan.reward is not None
    scenario, reward = plan.scenario, plan.reward
    starts = np.stack(
        [greedy_sequence(plan, scenario), lookahead_sequence(plan, scenario, reward, lookahead)]
    )
    totals = replay(plan, scenario, reward, starts)
    best, best_total = starts[int(totals.argmax())], float(totals.max())
    for _ in range(improve_passes):
        neighbours = single_moves(plan, best)
        if len(neighbours) == 0:
            break
        totals = replay(plan, scenario, reward, neighbours)
        if float(totals.max()) <= best_total + 1e-9:
            break
        best, best_total = neighbours[int(totals.argmax())], float(totals.max())
    if not plan.eligible[np.arange(plan.n_bookings), best].all():
        raise AssertionError("planner chose a masked driver")  # a bug, never bad input
    return np.asarray(best, dtype=np.int64)


def replay(
    plan: EpisodePlan, scenario: Scenario, reward: RewardSettings, sequences: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Episode return of each sequence (rows of driver indices), all replayed together."""
    count, n_b = sequences.shape
    plans = stack_plans([plan] * count)
    state = FleetState.start(plans)
    totals = np.zeros(count)
    for k in range(n_b):
        step = np.full(count, k)
        out = apply_decisions(scenario, state, plans, step, sequences[:, k])
        totals += rewards_of(out, plans.priority[:, k], reward)
    return totals


def greedy_sequence(plan: EpisodePlan, scenario: Scenario) -> NDArray[np.int64]:
    """What GreedyPolicy would do in this episode (same features, same tie-breaking)."""
    plans = stack_plans([plan])
    state = FleetState.start(plans)
    sequence = np.zeros(plan.n_bookings, dtype=np.int64)
    for k in range(plan.n_bookings):
        step = np.array([k])
        sequence[k] = int(greedy_actions(state, plans, step)[0])
        apply_decisions(scenario, state, plans, step, sequence[k : k + 1])
    return sequence


def greedy_actions(
    state: FleetState, plans: EpisodePlan, step: NDArray[np.int64]
) -> NDArray[np.int64]:
    """GreedyPolicy's choice in every episode of the batch: the earliest eligible ETA.

    The same float32 `eta_h` the observation carries, so ties break alike.
    """
    situations = situation_batch(state, plans, step)
    eta = np.where(situations.eligible, eta_h_batch(situations), np.inf)
    return np.asarray(eta.argmin(axis=1), dtype=np.int64)


def lookahead_sequence(
    plan: EpisodePlan, scenario: Scenario, reward: RewardSettings, lookahead: int
) -> NDArray[np.int64]:
    """Rolling-horizon min-cost matching of the next `lookahead` bookings to drivers."""
    plans = stack_plans([plan])
    state = FleetState.start(plans)
    n_b, n_d = plan.n_bookings, plan.n_drivers
    sequence = np.zeros(n_b, dtype=np.int64)
    for k in range(n_b):
        horizon = np.arange(k, min(k + max(1, min(lookahead, n_d)), n_b))
        step = np.repeat(horizon, n_d)
        drivers = np.tile(np.arange(n_d), len(horizon))
        out = outcomes_of(
            scenario,
            plans,
            np.zeros(len(step), dtype=np.int64),
            step,
            free_s=state.free_s[0, drivers],
            lat=state.lat[0, drivers],
            lon=state.lon[0, drivers],
        )
        cost = -rewards_of(out, plan.priority[step], reward).reshape(len(horizon), n_d)
        cost = np.where(plan.eligible[horizon], cost, INELIGIBLE_COST)
        rows, cols = linear_sum_assignment(cost)
        matched = int(cols[int(np.flatnonzero(rows == 0)[0])])
        # Two later bookings may compete for the only eligible driver; never take a masked one.
        sequence[k] = matched if plan.eligible[k, matched] else int(cost[0].argmin())
        apply_decisions(scenario, state, plans, np.array([k]), sequence[k : k + 1])
    return sequence


def single_moves(plan: EpisodePlan, sequence: NDArray[np.int64]) -> NDArray[np.int64]:
    """Every sequence that differs from `sequence` in one booking's (eligible) driver."""
    bookings, drivers = np.nonzero(plan.eligible)
    keep = drivers != sequence[bookings]
    moves = np.repeat(sequence[None, :], int(keep.sum()), axis=0)
    moves[np.arange(len(moves)), bookings[keep]] = drivers[keep]
    return moves


def sampled_futures(
    plan: EpisodePlan, decided: int, scenario: Scenario, rng: np.random.Generator, samples: int
) -> EpisodePlan:
    """`samples` episodes that agree with `plan` on all a dispatcher knows at booking `decided`.

    Kept: the initial fleet and bookings 0..`decided` (the current one included).
    Redrawn from the scenario: every later booking, and the cancellation draws of
    the current and later ones. Later bookings are a random subset of the bookings
    of fresh episodes decided after the current one, which draws them from the
    arrival pattern of the rest of the shift; if fresh episodes have too few such
    bookings (a shift running late), fresh bookings are moved to the current time.
    """
    later = plan.n_bookings - decided - 1
    fresh = plans_from_uniforms(
        scenario, np.stack([draw_uniforms(scenario, rng) for _ in range(samples)])
    )
    pool = {
        name: getattr(fresh, name).reshape(-1, *getattr(fresh, name).shape[2:])
        for name in BOOKING_FIELDS
    }
    now = plan.decided_s[decided]
    after = pool["decided_s"] > now
    if after.sum() >= later:
        pool = {name: values[after] for name, values in pool.items()}
    else:
        shift = np.maximum(now - pool["decided_s"], 0.0)
        for name in ("decided_s", "window_start_s", "window_end_s"):
            pool[name] = pool[name] + shift
    arrays: dict[str, Any] = {
        name: np.repeat(getattr(plan, name)[None], samples, axis=0) for name in PLAN_FIELDS
    }
    for row in range(samples):
        chosen = rng.choice(len(pool["decided_s"]), size=later, replace=False)
        chosen = chosen[np.argsort(pool["decided_s"][chosen], kind="stable")]
        for name in BOOKING_FIELDS:
            arrays[name][row, decided + 1 :] = pool[name][chosen]
    arrays["cancel_u"][:, decided] = rng.random(samples)
    return EpisodePlan(**arrays)


def rollout_returns(
    futures: EpisodePlan,
    state: FleetState,
    decided: int,
    drivers: NDArray[np.int64],
    *,
    scenario: Scenario,
    reward: RewardSettings,
) -> NDArray[np.float64]:
    """Mean return from booking `decided` on, per driver in `drivers`, greedy afterwards.

    `state` is the fleet of one episode before booking `decided`; every driver is
    tried in every future (the same futures for all drivers: common random
    numbers, so the comparison between drivers is not drowned by the futures'
    own spread).
    """
    samples, n_try = len(futures.decided_s), len(drivers)
    repeated: dict[str, Any] = {
        name: np.repeat(getattr(futures, name), n_try, axis=0) for name in PLAN_FIELDS
    }
    plans = EpisodePlan(**repeated)
    count = samples * n_try
    fleet = FleetState(*(np.repeat(part, count, axis=0) for part in state))
    totals = np.zeros(count)
    actions = np.tile(drivers, samples)
    for k in range(decided, futures.n_bookings):
        step = np.full(count, k)
        if k > decided:
            actions = greedy_actions(fleet, plans, step)
        out = apply_decisions(scenario, fleet, plans, step, actions)
        totals += rewards_of(out, plans.priority[:, k], reward)
    return np.asarray(totals.reshape(samples, n_try).mean(axis=0), dtype=np.float64)
