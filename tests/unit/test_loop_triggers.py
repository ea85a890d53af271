"""Triggers as pure functions: priorities, min-events skip, PSI drift at Kafka-scale samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from dispatchloop.daemon.cycles import Cycle, Outcome
from dispatchloop.daemon.triggers import (
    DriftReport,
    TriggerPolicy,
    TriggerState,
    drift_report,
    due_trigger,
    psi,
    skip_reason,
    tune_due,
)
from dispatchloop.replay.base import TimeWindow

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
POLICY = TriggerPolicy(timedelta(hours=6), new_events=50_000, drift_threshold=0.2, min_events=3_000)


def _cycle(outcome: Outcome = "rejected", hours_ago: float = 1, events_seen: int = 10_000) -> Cycle:
    return Cycle(
        id=1,
        scope="*",
        trigger="interval",
        stage="done",
        outcome=outcome,
        version=None,
        reasons=(),
        timings={},
        leader_id="a",
        leader_epoch=1,
        events_seen=events_seen,
        window=TimeWindow(),
        started_at=NOW - timedelta(hours=hours_ago),
        finished_at=None,
    )


def _state(last: Cycle | None, events: int, requests: int = 0, drift: DriftReport | None = None):
    return TriggerState(NOW, last, events, requests, drift)


def test_first_cycle_waits_for_the_minimum_of_data():
    assert due_trigger(POLICY, _state(None, 2_999)) is None
    assert due_trigger(POLICY, _state(None, 3_000)) == "interval"


def test_interval_and_new_events():
    assert due_trigger(POLICY, _state(_cycle(hours_ago=5.9), 10_100)) is None
    assert due_trigger(POLICY, _state(_cycle(hours_ago=6.0), 10_100)) == "interval"
    assert due_trigger(POLICY, _state(_cycle(hours_ago=1), 60_000)) == "new_events"


def test_a_request_wins_and_a_running_cycle_blocks_the_others():
    drifted = DriftReport({"reward": 0.5}, ("reward",), 1_000, 1_000)
    assert due_trigger(POLICY, _state(_cycle(), 10_000, requests=1, drift=drifted)) == "request"
    assert due_trigger(POLICY, _state(_cycle(), 10_000, drift=drifted)) == "drift"
    assert due_trigger(POLICY, _state(_cycle("running", hours_ago=9), 90_000)) is None


def test_a_skipped_cycle_is_retried_once_there_is_enough_data():
    skipped = _cycle("skipped", hours_ago=0.1, events_seen=1_000)
    assert due_trigger(POLICY, _state(skipped, 2_000)) is None
    assert due_trigger(POLICY, _state(skipped, 3_000)) == "new_events"


def test_an_aborted_cycle_is_rerun_with_its_trigger_a_bounded_number_of_times():
    aborted = _cycle("aborted", hours_ago=0.1)
    assert due_trigger(POLICY, _state(aborted, 10_000)) == "interval"
    twice = TriggerState(NOW, aborted, 10_000, 0, None, aborted_in_row=2)
    assert due_trigger(POLICY, twice) == "interval"
    thrice = TriggerState(NOW, aborted, 10_000, 0, None, aborted_in_row=3)
    assert due_trigger(POLICY, thrice) is None


def test_skip_reason_and_tune_interval():
    reason = skip_reason(2_999, 3_000)
    assert reason is not None and "2999 stored events, fewer than the 3000" in reason
    assert skip_reason(3_000, 3_000) is None
    assert tune_due(None, NOW, timedelta(days=7))
    assert not tune_due(NOW - timedelta(days=6), NOW, timedelta(days=7))
    assert tune_due(NOW - timedelta(days=7), NOW, timedelta(days=7))


KAFKA_SCALE = 200_000


def test_psi_is_near_zero_for_the_same_distribution_at_kafka_scale():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=KAFKA_SCALE), rng.normal(size=KAFKA_SCALE)
    assert psi(a, b) < 0.001  # a KS test at this size would call far smaller shifts significant
    shifted = rng.normal(loc=0.02, size=KAFKA_SCALE)  # 0.02 SD: real, but irrelevant
    assert psi(a, shifted) < 0.01


def test_psi_flags_a_shifted_and_a_rescaled_distribution():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=20_000)
    assert psi(reference, rng.normal(loc=0.6, size=20_000)) > 0.2
    assert psi(reference, rng.normal(scale=2.0, size=20_000)) > 0.2


def test_psi_on_a_discrete_feature_merges_tied_bins():
    rng = np.random.default_rng(2)
    reference = rng.choice([1.0, 2.0, 3.0], p=[0.6, 0.3, 0.1], size=10_000)
    same = rng.choice([1.0, 2.0, 3.0], p=[0.6, 0.3, 0.1], size=10_000)
    urgent = rng.choice([1.0, 2.0, 3.0], p=[0.2, 0.3, 0.5], size=10_000)
    assert np.isfinite(psi(reference, same)) and psi(reference, same) < 0.01
    assert psi(reference, urgent) > 0.2


def test_drift_report_names_the_drifted_features_and_refuses_tiny_samples():
    rng = np.random.default_rng(3)
    ref = {"reward": rng.normal(size=5_000), "empty_km": rng.exponential(size=5_000)}
    new = {"reward": rng.normal(loc=-1.0, size=5_000), "empty_km": rng.exponential(size=5_000)}
    report = drift_report(ref, new, threshold=0.2)
    assert report.drifted == ("reward",)
    assert report.scores["empty_km"] < 0.05 and report.max_score == report.scores["reward"]
    tiny = {"reward": new["reward"][:50]}
    assert drift_report(ref, tiny, threshold=0.2).drifted == ()


def test_psi_refuses_empty_samples():
    with pytest.raises(ValueError, match="non-empty"):
        psi(np.array([]), np.array([1.0]))


def _simulated(scenario, seed: int, n: int = 1_900):
    from dispatchloop.events import DispatchOutcomeEvent
    from dispatchloop.settings import RewardSettings
    from dispatchloop.sim.policies import GreedyPolicy
    from dispatchloop.sim.producer import LoggingPolicy, simulated_events

    docs = simulated_events(
        scenario, RewardSettings(), LoggingPolicy(GreedyPolicy(), "greedy"), n, seed=seed
    )
    return [DispatchOutcomeEvent.model_validate(doc) for doc in docs]


def test_event_features_see_a_smaller_fleet_as_drift_and_a_new_seed_as_none():
    import dataclasses

    from dispatchloop.daemon.triggers import DRIFT_FEATURES, event_features
    from dispatchloop.settings import RewardSettings
    from dispatchloop.sim.scenario import Scenario

    base = Scenario.default()
    reward = RewardSettings()
    reference = event_features(_simulated(base, seed=1), reward)
    assert set(reference) == set(DRIFT_FEATURES)
    assert all(np.isfinite(values).all() and len(values) == 1_900 for values in reference.values())
    same = event_features(_simulated(base, seed=2), reward)
    assert drift_report(reference, same, 0.2).drifted == ()
    smaller = event_features(_simulated(dataclasses.replace(base, n_drivers=3), seed=3), reward)
    assert "candidates" in drift_report(reference, smaller, 0.2).drifted
