"""The shared reward and featurizer: formula, vectorised form, candidate symmetry."""

from __future__ import annotations

import json
from datetime import timedelta, timezone

import numpy as np
import pytest

from dispatchloop.decisions.featurizer import (
    CANDIDATE_FEATURES,
    DEMAND_POINTS,
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
    Situation,
    demand_map,
    distance_km,
    featurize,
    situation_from_event,
)
from dispatchloop.decisions.reward import (
    STATUS_CODES,
    event_reward,
    outcome_reward,
    outcome_rewards,
)
from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.settings import RewardSettings
from dispatchloop.testing.events import encode, event_stream

WEIGHTS = RewardSettings()
DEMAND = demand_map([(46.20, 6.14), (46.24, 6.11), (46.19, 6.15), (46.21, 6.13)])


def _events(n: int = 50) -> list[DispatchOutcomeEvent]:
    parsed = [parse_outcome(encode(e), 65_536) for e in event_stream(seed=11, n_events=n)]
    return [e for e in parsed if isinstance(e, DispatchOutcomeEvent)]


def test_reward_formula_by_hand():
    weights = RewardSettings(
        empty_km_weight=1.0,
        delay_weight_per_min=0.5,
        priority_weights=(1.0, 2.0, 4.0),
        late_penalty=5.0,
        cancel_penalty=20.0,
    )
    assert outcome_reward("completed", 3.0, 2.0, 1, weights) == pytest.approx(-(2.0 + 1.5))
    assert outcome_reward("late", 10.0, 1.0, 3, weights) == pytest.approx(-(1.0 + 20.0 + 5.0))
    assert outcome_reward("cancelled", 0.0, 0.0, 2, weights) == pytest.approx(-20.0)
    # An early pickup is not rewarded beyond zero delay.
    assert outcome_reward("completed", -5.0, 0.0, 2, weights) == pytest.approx(0.0)


def test_vectorised_reward_equals_scalar():
    rng = np.random.default_rng(5)
    statuses = rng.choice(list(STATUS_CODES), size=200)
    delays, kms = rng.normal(3, 5, 200), rng.gamma(2, 2, 200)
    priorities = rng.integers(1, 4, 200)
    batch = outcome_rewards(
        np.array([STATUS_CODES[s] for s in statuses]), delays, kms, priorities, WEIGHTS
    )
    scalar = [
        outcome_reward(s, float(d), float(k), int(p), WEIGHTS)
        for s, d, k, p in zip(statuses, delays, kms, priorities, strict=True)
    ]
    np.testing.assert_allclose(batch, scalar)


def test_logged_reward_wins_over_the_formula():
    event = _events(1)[0]
    assert event_reward(event, WEIGHTS) == outcome_reward(
        event.outcome.status,
        event.outcome.pickup_delay_min,
        event.outcome.empty_km,
        event.booking.priority,
        WEIGHTS,
    )
    with_reward = DispatchOutcomeEvent.model_validate({**event.model_dump(), "reward": -7.25})
    assert event_reward(with_reward, WEIGHTS) == -7.25


def test_distance_is_haversine():
    # Geneva Cornavin to Geneva airport: about 4.0 km as the crow flies.
    assert float(distance_km(46.2102, 6.1424, 46.2381, 6.1090)) == pytest.approx(4.0, abs=0.2)
    assert float(distance_km(46.2, 6.1, 46.2, 6.1)) == 0.0


def test_features_have_fixed_widths_and_any_number_of_candidates():
    for event in _events():
        features = featurize(situation_from_event(event), DEMAND)
        n = len(event.candidates)
        assert features.candidates.shape == (n, N_CANDIDATE_FEATURES)
        assert features.context.shape == (N_CONTEXT_FEATURES,)
        assert features.mask.tolist() == [c.eligible for c in event.candidates]
        assert np.isfinite(features.candidates).all()
        assert np.isfinite(features.context).all()


def test_candidate_rows_follow_their_driver_when_reordered():
    event = _events(1)[0]
    raw = json.loads(event.model_dump_json())
    raw["candidates"] = list(reversed(raw["candidates"]))
    reordered = DispatchOutcomeEvent.model_validate(raw)
    original = featurize(situation_from_event(event), DEMAND)
    flipped = featurize(situation_from_event(reordered), DEMAND)
    np.testing.assert_allclose(flipped.candidates[::-1], original.candidates, rtol=1e-6)
    np.testing.assert_allclose(flipped.context, original.context)


def test_hour_of_day_is_utc_whatever_the_offset():
    event = _events(1)[0]
    raw = json.loads(event.model_dump_json())
    plus_five = timezone(timedelta(hours=5))
    shifted = DispatchOutcomeEvent.model_validate(
        {**raw, "decided_at": event.decided_at.astimezone(plus_five)}
    )
    assert situation_from_event(shifted).hour_of_day == pytest.approx(
        situation_from_event(event).hour_of_day
    )


def _two_drivers(available_in_min: tuple[float, float]) -> Situation:
    """Driver 0 in town, next to every demand point; driver 1 20 km out of town."""
    return Situation(
        hour_of_day=9.0,
        priority=1,
        pickup_lat=46.20,
        pickup_lon=6.14,
        dropoff_lat=46.21,
        dropoff_lon=6.13,
        to_window_start_min=10.0,
        to_window_end_min=25.0,
        driver_lat=np.array([46.205, 46.38]),
        driver_lon=np.array([6.135, 6.14]),
        available_in_min=np.array(available_in_min),
        queue_len=np.zeros(2),
        eligible=np.ones(2, dtype=np.bool_),
    )


def test_coverage_features_say_which_driver_the_demand_depends_on():
    names = list(CANDIDATE_FEATURES)
    loss, share, mean_km = (
        names.index(n) for n in ("coverage_loss_km", "covered_share", "mean_km_to_demand")
    )
    free = featurize(_two_drivers((0.0, 0.0)), DEMAND).candidates
    assert free[0, share] == 1.0 and free[1, share] == 0.0  # the town driver is nearest to all
    assert free[0, loss] > 1.5  # without it, the next reach is ~20 km farther (/10 scaling)
    assert free[1, loss] == 0.0  # nothing depends on the far driver
    assert free[0, mean_km] < free[1, mean_km]
    # Busy for an hour, the town driver's reach is worse than the free far one's: roles swap.
    busy = featurize(_two_drivers((60.0, 0.0)), DEMAND).candidates
    assert busy[0, share] == 0.0 and busy[1, share] == 1.0


def test_demand_map_is_deterministic_capped_and_refuses_no_history():
    points = [(46.0 + i * 1e-3, 6.0) for i in range(500)]
    first, again = demand_map(points), demand_map(points)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (DEMAND_POINTS, 2)
    assert first[0].tolist() == [46.0, 6.0] and first[-1].tolist() == [46.499, 6.0]
    assert demand_map(points[:3]).shape == (3, 2)
    with pytest.raises(ValueError, match="at least one pickup"):
        demand_map([])
