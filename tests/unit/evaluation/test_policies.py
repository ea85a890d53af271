"""Parsing what `evaluate` is asked: names, model directories, seeds, baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatchloop.evaluation.policies import (
    BASELINES,
    GYM_BASELINES,
    EvaluationInputError,
    EvaluationRequest,
    PolicySpec,
    parse_policies,
)
from dispatchloop.evaluation.simulated import dispatch_policy
from dispatchloop.sim.policies import NAMED_POLICIES
from dispatchloop.sim.rollout import TEST_SEED_BASE, validation_seeds


def test_baselines_and_directories(tmp_path: Path) -> None:
    specs = parse_policies(["random", " greedy ", "rollout", str(tmp_path), ""])
    assert specs == [
        PolicySpec("random"),
        PolicySpec("greedy"),
        PolicySpec("rollout"),
        PolicySpec(str(tmp_path), tmp_path),
    ]
    assert [spec.is_model for spec in specs] == [False, False, False, True]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["greedy", "nowhere/model"], "neither a baseline"),
        (["greedy", "greedy"], "listed twice"),
        ([""], "no policy"),
    ],
)
def test_unusable_names_are_refused(names: list[str], message: str) -> None:
    with pytest.raises(EvaluationInputError, match=message):
        parse_policies(names)


def test_every_baseline_name_builds_a_simulator_policy() -> None:
    """`evaluate` accepts exactly the names `simulate` can build (one table, two commands)."""
    assert set(BASELINES) == set(NAMED_POLICIES)
    for name in BASELINES:
        assert dispatch_policy(PolicySpec(name), seed=3).name == name


def test_gym_has_no_greedy_baseline() -> None:
    with pytest.raises(EvaluationInputError, match=r"\(random\)"):
        parse_policies(["greedy"], GYM_BASELINES)


def test_seeds_are_test_seeds_offset_by_seed() -> None:
    request = EvaluationRequest((PolicySpec("greedy"),), "greedy", episodes=3, seed=7)
    assert request.seeds == [TEST_SEED_BASE + 7, TEST_SEED_BASE + 8, TEST_SEED_BASE + 9]
    assert not set(request.seeds) & set(validation_seeds(1_000))


@pytest.mark.parametrize(
    ("baseline", "episodes", "seed", "message"),
    [("hindsight", 5, 0, "not among"), ("greedy", 1, 0, "at least 2"), ("greedy", 5, -1, "seed")],
)
def test_bad_requests_are_refused(baseline: str, episodes: int, seed: int, message: str) -> None:
    with pytest.raises(EvaluationInputError, match=message):
        EvaluationRequest((PolicySpec("greedy"),), baseline, episodes, seed)
