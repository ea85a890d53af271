"""Scenario.fit's estimators on foreign (non-simulator) events: a usable world, clear errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.calibration import ScenarioFitError, fit_events
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import resolve_policy, simulated_events
from dispatchloop.sim.rollout import run_episodes, test_seeds
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.events import event_stream


def test_fit_on_foreign_events_gives_a_valid_playable_scenario() -> None:
    events = [DispatchOutcomeEvent.model_validate(e) for e in event_stream(4, 19 * 30)]
    fitted = fit_events(events, Scenario.default())
    assert 9 <= fitted.n_drivers <= 14  # the factory draws 9..14 candidates
    assert fitted.bookings_per_episode == 19
    assert sum(fitted.priority_mix) == pytest.approx(1.0)
    assert fitted.travel_speed_kmh > 0 and fitted.service_min >= 0
    assert len(fitted.pickup_points) == 512  # thinned evenly, first and last kept
    first, last = events[0].booking.pickup, events[-1].booking.pickup
    assert fitted.pickup_points[0] == (first.lat, first.lon)
    assert fitted.pickup_points[-1] == (last.lat, last.lon)
    results = run_episodes(GreedyPolicy(), fitted, RewardSettings(), test_seeds(4))
    assert np.isfinite(results.returns).all()


def test_fit_keeps_what_the_data_cannot_identify() -> None:
    base = dataclasses.replace(Scenario.default(), location_jitter_km=0.7, cancel_max=0.9)
    events = [DispatchOutcomeEvent.model_validate(e) for e in event_stream(5, 40)]
    fitted = fit_events(events, base)
    assert (fitted.location_jitter_km, fitted.cancel_max) == (0.7, 0.9)


def test_fit_without_events_says_so() -> None:
    with pytest.raises(ScenarioFitError, match="no events in the window"):
        fit_events([], Scenario.default())


def test_invalid_scenarios_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="priority_mix"):
        dataclasses.replace(Scenario.default(), priority_mix=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="arrival_rate_by_hour"):
        dataclasses.replace(Scenario.default(), arrival_rate_by_hour=(0.0,) * 24)


def test_sampling_every_kth_event_keeps_the_estimates() -> None:
    events = [DispatchOutcomeEvent.model_validate(e) for e in event_stream(6, 19 * 40)]
    full = fit_events(events, Scenario.default())
    sampled = fit_events(events, Scenario.default(), every=3)
    assert sampled.bookings_per_episode == full.bookings_per_episode == 19
    assert sum(sampled.arrival_rate_by_hour) == pytest.approx(19.0)  # rescaled to all events
    np.testing.assert_allclose(sampled.priority_mix, full.priority_mix, atol=0.06)
    assert len(sampled.pickup_points) == -(-19 * 40 // 3)


def test_fit_recovers_shift_length_and_start_hours() -> None:
    truth = dataclasses.replace(
        Scenario.default(),
        arrival_rate_by_hour=(1.0,) * 24,
        shift_hours=6.0,
        shift_start_by_hour=tuple(1.0 if h in (6, 14) else 0.0 for h in range(24)),
    )
    events = [
        DispatchOutcomeEvent.model_validate(e)
        for e in simulated_events(
            truth, RewardSettings(), resolve_policy("greedy", 0), 19 * 150, seed=0
        )
    ]
    fitted = fit_events(events, Scenario.default())
    assert fitted.shift_hours == pytest.approx(6.0, rel=0.1)
    assert fitted.shift_start_by_hour is not None
    starts = np.asarray(fitted.shift_start_by_hour)
    assert starts[[5, 6, 7, 13, 14, 15]].sum() > 0.95  # 06:xx / 14:xx, estimates ± ~20 min
    assert sum(fitted.arrival_rate_by_hour) == pytest.approx(19.0)
    # The fitted world keeps the load of a 6-hour shift, not of a whole day.
    replayed = [
        DispatchOutcomeEvent.model_validate(e)
        for e in simulated_events(
            fitted, RewardSettings(), resolve_policy("greedy", 0), 19 * 20, seed=9
        )
    ]
    spans = [
        (b.decided_at - a.decided_at).total_seconds() / 3600
        for a, b in zip(replayed[::19], replayed[18::19], strict=True)
    ]
    assert max(spans) <= 6.0 * 1.1 + 1e-9
