"""Serving decides as the training-time policy does, and logs the true propensity."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from dispatchloop.decisions.featurizer import featurize, situation_from_event
from dispatchloop.events import DecideRequest, DispatchOutcomeEvent, parse_outcome
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import DQNPolicy, numpy_scorer
from dispatchloop.serving.dispatcher import (
    Dispatcher,
    Routing,
    ServedModel,
    choice_probabilities,
    decide,
    greedy_choices,
    propensity_of,
    sample_decision,
    score_arms,
)
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, LoggingPolicy
from dispatchloop.sim.producer import simulated_events
from dispatchloop.sim.scenario import Scenario


def _model(seed: int, version: str, scenario: Scenario) -> tuple[CandidateQNetwork, ServedModel]:
    torch.manual_seed(seed)
    network = CandidateQNetwork(32, 2)
    served = ServedModel(version, "dqn", numpy_scorer(network), scenario.arrays.demand)
    return network, served


def _events(scenario: Scenario, policy: LoggingPolicy, n: int) -> list[DispatchOutcomeEvent]:
    out = []
    for raw in simulated_events(scenario, RewardSettings(), policy, n, seed=4):
        event = parse_outcome(json.dumps(raw).encode(), 1 << 20)
        assert isinstance(event, DispatchOutcomeEvent)
        out.append(event)
    return out


def _request(event: DispatchOutcomeEvent) -> DecideRequest:
    return DecideRequest(
        decided_at=event.decided_at,
        booking=event.booking,
        candidates=event.candidates,
        company_id=event.company_id,
    )


@pytest.mark.parametrize("n_drivers", [9, 40])
def test_serving_choice_is_the_training_time_policys_choice(n_drivers: int) -> None:
    """The simulator logged what DQNPolicy chose; serving, fed the event, chooses the same."""
    scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
    network, served = _model(1, "v1", scenario)
    events = _events(scenario, LoggingPolicy(DQNPolicy(network), "dqn", "v1"), 300)
    assert {len(e.candidates) for e in events} == {n_drivers}
    routing = Routing(champion=served)
    rng = np.random.default_rng(0)
    for event in events:
        decision = decide(_request(event), routing, 0.0, rng)
        assert decision.driver_id == event.action.driver_id
        assert (decision.model_version, decision.propensity) == ("v1", 1.0)
        features = featurize(situation_from_event(event), scenario.arrays.demand)
        obs = {
            "candidates": features.candidates,
            "context": features.context,
            "action_mask": features.mask.astype(np.int8),
        }
        assert decision.candidate_index == DQNPolicy(network).act(obs)


def test_batched_greedy_choices_are_decides_choices_whatever_the_candidate_counts() -> None:
    """Shadow scoring's vectorised path chooses what serving chooses, request by request."""
    events = []
    for n_drivers in (9, 12):
        scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
        events += _events(scenario, LoggingPolicy(GreedyPolicy(), "greedy"), 120)
    _, served = _model(2, "v2", Scenario.default())
    situations = [situation_from_event(e) for e in events[::-1]]  # sizes interleaved
    masks = [s.eligible for s in situations]
    batched = greedy_choices(served, situations, masks)
    rng = np.random.default_rng(0)
    one_by_one = [
        decide(_request(e), Routing(champion=served), 0.0, rng).candidate_index
        for e in events[::-1]
    ]
    assert batched.tolist() == one_by_one


def test_without_a_model_the_greedy_fallback_decides_and_says_so() -> None:
    scenario = Scenario.default()
    events = _events(scenario, LoggingPolicy(GreedyPolicy(), "greedy"), 100)
    rng = np.random.default_rng(0)
    for event in events:
        decision = decide(_request(event), Routing(), 0.0, rng)
        assert (decision.policy, decision.model_version) == ("greedy", None)
        assert decision.driver_id == event.action.driver_id


def test_propensities_sum_to_one_and_match_the_empirical_frequencies() -> None:
    """100k decisions of one situation under a 30 % canary and 10 % exploration."""
    scenario = Scenario.default()
    _, champion = _model(1, "v1", scenario)
    _, challenger = _model(2, "v2", scenario)
    event = _events(scenario, LoggingPolicy(GreedyPolicy(), "greedy"), 40)[-1]
    request = _request(event)
    routing = Routing(champion, challenger, 0.3)
    rng = np.random.default_rng(7)
    # The situation is scored once; the 100k draws exercise the sampling `decide` runs.
    arms = score_arms(request, routing)
    mask = np.array([c.eligible for c in request.candidates])
    assert decide(request, routing, 0.1, rng).model_version in ("v1", "v2")
    n = 100_000
    counts = np.zeros(len(request.candidates))
    logged: dict[int, float] = {}
    versions = {"v1": 0, "v2": 0}
    for _ in range(n):
        decision = sample_decision(request, arms, mask, 0.1, rng)
        versions[str(decision.model_version)] += 1
        counts[decision.candidate_index] += 1
        logged.setdefault(decision.candidate_index, decision.propensity)
        assert logged[decision.candidate_index] == decision.propensity
    assert counts[~mask].sum() == 0
    assert abs(versions["v2"] / n - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
    greedy = [int(np.where(mask, arm.scores, -np.inf).argmax()) for arm in arms]
    truth = choice_probabilities(np.array([0.7, 0.3]), np.array(greedy), mask, 0.1)
    assert truth[mask].sum() == pytest.approx(1.0, abs=1e-12)
    assert set(logged) == set(np.flatnonzero(mask))  # every eligible driver was drawn
    for index, propensity in logged.items():
        assert propensity == pytest.approx(truth[index], abs=1e-12)
        se = np.sqrt(propensity * (1 - propensity) / n)
        assert abs(counts[index] / n - propensity) < 5 * se


def test_choice_probabilities_are_a_distribution_over_eligible_drivers() -> None:
    mask = np.array([True, False, True, True])
    p = choice_probabilities(np.array([0.7, 0.3]), np.array([0, 2]), mask, 0.2)
    assert p.sum() == pytest.approx(1.0)
    assert p[1] == 0.0
    assert p[0] == pytest.approx(0.7 * 0.8 + 0.2 / 3)
    assert p[2] == pytest.approx(0.3 * 0.8 + 0.2 / 3)


def test_the_logged_propensity_is_the_mixture_probability_bit_for_bit() -> None:
    """`propensity_of` (plain floats, what a decision logs) against the array definition."""
    rng = np.random.default_rng(3)
    for _ in range(2_000):
        n = int(rng.integers(1, 41))
        mask = rng.random(n) < rng.uniform(0.05, 1.0)
        mask[rng.integers(n)] = True
        eligible = np.flatnonzero(mask)
        weights = rng.random(int(rng.integers(1, 3))) + 1e-3
        shares = [float(w / weights.sum()) for w in weights]
        greedy = [int(rng.choice(eligible)) for _ in shares]
        epsilon = float(rng.choice([0.0, 0.05, rng.random() * 0.999]))
        truth = choice_probabilities(np.array(shares), np.array(greedy), mask, epsilon)
        for index in range(n):
            assert propensity_of(index, shares, greedy, mask, epsilon) == truth[index]


def test_swaps_between_decisions_never_mix_versions() -> None:
    scenario = Scenario.default()
    models = [_model(s, f"v{s}", scenario)[1] for s in (1, 2, 3)]
    event = _events(scenario, LoggingPolicy(GreedyPolicy(), "greedy"), 20)[-1]
    request = _request(event)
    expected = {
        m.version: decide(request, Routing(m), 0.0, np.random.default_rng(0)) for m in models
    }
    dispatcher = Dispatcher(epsilon=0.0, seed=0)
    dispatcher.swap("*", Routing(models[0]))
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            dispatcher.swap("*", Routing(models[i % 3]))
            i += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        seen = set()
        for _ in range(3_000):
            decision = dispatcher.decide(request)
            assert decision == expected[str(decision.model_version)]
            seen.add(decision.model_version)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert len(seen) >= 2


def test_a_company_resolves_to_its_own_scope_else_the_global_one() -> None:
    scenario = Scenario.default()
    _, pilot = _model(1, "v-pilot", scenario)
    _, fleet = _model(2, "v-fleet", scenario)
    dispatcher = Dispatcher()
    dispatcher.swap("*", Routing(fleet))
    dispatcher.swap("acme", Routing(pilot))
    event = _events(scenario, LoggingPolicy(GreedyPolicy(), "greedy"), 5)[-1]
    request = _request(event)
    assert (
        dispatcher.decide(request.model_copy(update={"company_id": "acme"})).model_version
        == "v-pilot"
    )
    assert (
        dispatcher.decide(request.model_copy(update={"company_id": "other"})).model_version
        == "v-fleet"
    )
    assert (
        dispatcher.decide(request.model_copy(update={"company_id": None})).model_version
        == "v-fleet"
    )


def test_a_request_without_an_eligible_driver_is_refused() -> None:
    now = datetime(2026, 12, 1, 8, tzinfo=UTC)
    body = {
        "decided_at": now.isoformat(),
        "booking": {
            "booking_id": "b",
            "pickup": {"lat": 46.2, "lon": 6.1},
            "dropoff": {"lat": 46.3, "lon": 6.2},
            "window_start": now.isoformat(),
            "window_end": (now + timedelta(minutes=15)).isoformat(),
            "priority": 1,
        },
        "candidates": [
            {
                "driver_id": "d",
                "lat": 46.2,
                "lon": 6.1,
                "available_in_min": 0,
                "queue_len": 0,
                "eligible": False,
            }
        ],
    }
    with pytest.raises(ValueError, match="no candidate is eligible"):
        DecideRequest.model_validate(body)


def test_serving_does_not_import_torch() -> None:
    code = "import sys, dispatchloop.serving.dispatcher; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
