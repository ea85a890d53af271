"""Exact replays of assignment sequences, for the hindsight planner (`HindsightPolicy`).

Kept apart from policies.py so the policy classes stay short; everything here
runs the simulator's own batched physics, so a replayed return is the return
the env would give.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from dispatchloop.rl.featurizer import CANDIDATE_FEATURES, featurize_batch
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.dynamics import (
    EpisodePlan,
    FleetState,
    apply_decisions,
    outcomes_of,
    rewards_of,
    situation_batch,
    stack_plans,
)
from dispatchloop.sim.scenario import Scenario

INELIGIBLE_COST = 1e9
ETA_COLUMN = CANDIDATE_FEATURES.index("eta_h")


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
        features = featurize_batch(situation_batch(state, plans, step))
        eta = np.where(features.mask, features.candidates[..., ETA_COLUMN], np.inf)
        sequence[k] = int(eta.argmin(axis=1)[0])
        apply_decisions(scenario, state, plans, step, sequence[k : k + 1])
    return sequence


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
