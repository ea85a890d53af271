"""The one reward function: simulator, logged events and serving all call it."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from dispatchloop.events import DispatchOutcomeEvent, OutcomeStatus
from dispatchloop.settings import RewardSettings

STATUS_CODES: dict[OutcomeStatus, int] = {"completed": 0, "late": 1, "cancelled": 2}


def outcome_reward(
    status: OutcomeStatus,
    pickup_delay_min: float,
    empty_km: float,
    priority: int,
    weights: RewardSettings,
) -> float:
    """Negative cost of one served booking; see RewardSettings for the formula."""
    return float(
        outcome_rewards(
            np.array([STATUS_CODES[status]]),
            np.array([pickup_delay_min]),
            np.array([empty_km]),
            np.array([priority]),
            weights,
        )[0]
    )


def outcome_rewards(
    status_codes: NDArray[np.integer],
    pickup_delay_min: NDArray[np.floating],
    empty_km: NDArray[np.floating],
    priority: NDArray[np.integer],
    weights: RewardSettings,
) -> NDArray[np.float64]:
    """Vectorised form for the simulator's batched path; same arithmetic as outcome_reward."""
    priority_weight = np.asarray(weights.priority_weights, dtype=np.float64)[priority - 1]
    delay_cost = weights.delay_weight_per_min * priority_weight * np.maximum(pickup_delay_min, 0.0)
    cost = weights.empty_km_weight * empty_km + delay_cost
    cost = cost + weights.late_penalty * (status_codes == STATUS_CODES["late"])
    cost = cost + weights.cancel_penalty * (status_codes == STATUS_CODES["cancelled"])
    return np.asarray(-cost, dtype=np.float64)


def event_reward(event: DispatchOutcomeEvent, weights: RewardSettings) -> float:
    """The logged reward when the dispatch system sent one, else the shared function's."""
    if event.reward is not None:
        return event.reward
    outcome = event.outcome
    return outcome_reward(
        outcome.status, outcome.pickup_delay_min, outcome.empty_km, event.booking.priority, weights
    )
