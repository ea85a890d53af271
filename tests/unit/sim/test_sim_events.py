"""Simulated events are what the env saw: same features, same reward, valid schema v1."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from dispatchloop.decisions.featurizer import featurize, situation_from_event
from dispatchloop.decisions.reward import event_reward
from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.producer import (
    SimulateInputError,
    load_scenario,
    resolve_policy,
    simulated_events,
)
from dispatchloop.sim.scenario import Scenario

REWARD = RewardSettings(late_penalty=7.0, cancel_penalty=11.0)


def _parse(event: dict[str, object]) -> DispatchOutcomeEvent:
    parsed = parse_outcome(json.dumps(event).encode(), max_bytes=65_536)
    assert isinstance(parsed, DispatchOutcomeEvent), parsed
    return parsed


NIGHT_SHIFT = dataclasses.replace(
    Scenario.default(),
    arrival_rate_by_hour=(1.0,) * 24,
    shift_hours=5.0,
    shift_start_by_hour=tuple(1.0 if h == 22 else 0.0 for h in range(24)),
)


@pytest.mark.parametrize(
    ("seed", "scenario"),
    [(0, Scenario.default()), (41, Scenario.default()), (5, NIGHT_SHIFT)],
    ids=["default-0", "default-41", "night-shift-past-midnight"],
)
def test_logged_event_features_and_reward_equal_the_env(seed: int, scenario: Scenario) -> None:
    n_events = 2 * scenario.bookings_per_episode + 3  # crosses two episode boundaries
    events = simulated_events(
        scenario, REWARD, resolve_policy("random", seed), n_events, seed=seed, epsilon=0.3
    )
    env = DispatchEnv(scenario, REWARD, max_candidates=12)
    obs, _ = env.reset(seed=seed)
    n = scenario.n_drivers
    for event in events:
        logged = _parse(event)
        features = featurize(situation_from_event(logged), scenario.arrays.demand)
        np.testing.assert_array_equal(features.candidates, obs["candidates"][:n])
        np.testing.assert_array_equal(features.context, obs["context"])
        np.testing.assert_array_equal(features.mask, obs["action_mask"][:n].astype(bool))
        obs, reward, done, _, info = env.step(logged.action_index)
        assert event_reward(logged, REWARD) == pytest.approx(reward, abs=1e-12)
        assert logged.outcome.status == info["outcome_status"]
        if done:
            obs, _ = env.reset()


def test_events_are_deterministic_unique_and_form_trajectories() -> None:
    scenario = Scenario.default()
    first = list(simulated_events(scenario, REWARD, resolve_policy("greedy", 3), 60, seed=3))
    again = list(simulated_events(scenario, REWARD, resolve_policy("greedy", 3), 60, seed=3))
    assert first == again
    assert len({e["event_id"] for e in first}) == 60
    by_episode: dict[object, list[object]] = {}
    for event in first:
        by_episode.setdefault(event["episode_id"], []).append(event["step"])
    assert [len(steps) for steps in by_episode.values()] == [19, 19, 19, 3]
    assert all(steps == list(range(len(steps))) for steps in by_episode.values())
    parsed = [_parse(e) for e in first[:19]]
    assert all(a.decided_at <= b.decided_at for a, b in itertools.pairwise(parsed))
    assert {p.action.policy for p in parsed} == {"greedy"}


def test_propensity_is_the_epsilon_greedy_probability() -> None:
    scenario = Scenario.default()
    events = [
        _parse(e)
        for e in simulated_events(
            scenario, REWARD, resolve_policy("greedy", 5), 200, seed=5, epsilon=0.25
        )
    ]
    explored = 0
    for event in events:
        n_eligible = sum(c.eligible for c in event.candidates)
        greedy = _parse_greedy_choice(event)
        expected = 0.75 * (event.action_index == greedy) + 0.25 / n_eligible
        assert event.action.propensity == pytest.approx(expected)
        explored += event.action_index != greedy
    assert 10 < explored < 60  # about 25 % × (1 − 1/n) of 200
    assert events[0].action.policy == "greedy-eps0.25"


def _parse_greedy_choice(event: DispatchOutcomeEvent) -> int:
    features = featurize(situation_from_event(event), Scenario.default().arrays.demand)
    eta = np.where(features.mask, features.candidates[:, 2], np.inf)
    return int(eta.argmin())


def test_bad_policy_and_scenario_are_reported_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SimulateInputError, match="neither greedy, random, hindsight"):
        resolve_policy("does-not-exist", 0)
    broken = tmp_path / "scenario.json"
    broken.write_text(json.dumps({"n_drivers": 0}))
    with pytest.raises(SimulateInputError, match=r"n_drivers must be 1\.\.64"):
        load_scenario(broken)
    with pytest.raises(SimulateInputError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.json")


def test_scenario_round_trips_through_json(tmp_path: Path) -> None:
    scenario = Scenario.default()
    path = tmp_path / "scenario.json"
    path.write_text(scenario.to_json())
    assert load_scenario(path) == scenario
    with pytest.raises(ValueError, match="unknown scenario field"):
        Scenario.from_dict({"fleet": 3})


def test_night_shift_runs_past_midnight_within_its_length() -> None:
    events = [
        _parse(e)
        for e in simulated_events(NIGHT_SHIFT, REWARD, resolve_policy("greedy", 1), 19 * 6, seed=1)
    ]
    by_episode: dict[str, list[DispatchOutcomeEvent]] = {}
    for event in events:
        by_episode.setdefault(event.episode_id, []).append(event)
    crossed = 0
    for episode in by_episode.values():
        first, last = episode[0].decided_at, episode[-1].decided_at
        assert (first.hour - 22) % 24 < 5  # the shift starts at 22:xx, its bookings after
        assert (last - first).total_seconds() <= 5 * 3600
        crossed += last.date() > first.date()
    assert crossed > 0
