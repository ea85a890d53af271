"""The A/B report: JSON shape, pairing against the baseline, gap share only when bounded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dispatchloop.evaluation.paired import gap_share, paired_difference
from dispatchloop.evaluation.report import RETURN, build_report, render_table


def _runs() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    base = rng.normal(-80.0, 15.0, size=60)
    late = rng.uniform(0.0, 0.3, size=60)
    return {
        "random": {RETURN: base - 30.0 + rng.normal(0, 2, 60), "late_rate": late + 0.2},
        "greedy": {RETURN: base, "late_rate": late},
        "models/dqn": {RETURN: base + 3.0 + rng.normal(0, 1, 60), "late_rate": late - 0.01},
        "hindsight": {RETURN: base + 8.0 + rng.normal(0, 1, 60), "late_rate": late - 0.05},
    }


def test_json_shape_and_figures() -> None:
    runs = _runs()
    report = build_report(
        runs,
        environment="dispatch:default",
        seeds=range(20_000_000, 20_000_060),
        baseline="greedy",
        rng=np.random.default_rng(0),
        gap_policies=["models/dqn"],
    )
    data = json.loads(json.dumps(report.to_json()))
    assert set(data["policies"]) == set(runs)
    assert set(data["paired"]) == {"random", "models/dqn", "hindsight"}
    greedy = data["policies"]["greedy"]
    assert greedy["mean"] == pytest.approx(runs["greedy"][RETURN].mean())
    assert greedy["ci99"][0] < greedy["mean"] < greedy["ci99"][1]
    dqn = data["paired"]["models/dqn"]
    expected = paired_difference(runs["models/dqn"][RETURN], runs["greedy"][RETURN])
    assert dqn["vs"] == "greedy"
    assert dqn["mean_diff"] == pytest.approx(expected.mean_diff)
    assert dqn["ci99"] == pytest.approx(list(expected.ci))
    assert dqn["significant"] is True
    assert dqn["guardrails"]["late_rate"]["mean_diff"] == pytest.approx(-0.01)
    share = gap_share(
        runs["models/dqn"][RETURN],
        runs["greedy"][RETURN],
        runs["hindsight"][RETURN],
        np.random.default_rng(0),
    )
    assert dqn["gap_share"]["share"] == pytest.approx(share.share)
    assert dqn["gap_share"]["low"] == "greedy"
    assert "gap_share" not in data["paired"]["random"]
    assert data["episodes"] == 60
    assert data["seeds"] == {"first": 20_000_000, "last": 20_000_059}


def test_no_gap_share_without_hindsight() -> None:
    runs = _runs()
    del runs["hindsight"]
    report = build_report(
        runs,
        environment="x",
        seeds=range(60),
        baseline="greedy",
        rng=np.random.default_rng(0),
        gap_policies=["models/dqn"],
    )
    assert "gap_share" not in report.to_json()["paired"]["models/dqn"]


def test_baseline_must_be_evaluated() -> None:
    with pytest.raises(ValueError, match="baseline 'hindsight'"):
        build_report(
            {"random": {RETURN: np.zeros(3)}},
            environment="x",
            seeds=range(3),
            baseline="hindsight",
            rng=np.random.default_rng(0),
        )


def test_lengths_must_match_the_seeds() -> None:
    with pytest.raises(ValueError, match="4 return values for 3 seeds"):
        build_report(
            {"greedy": {RETURN: np.zeros(4)}},
            environment="x",
            seeds=range(3),
            baseline="greedy",
            rng=np.random.default_rng(0),
        )


def test_table_lists_every_policy_with_its_figures() -> None:
    runs = _runs()
    report = build_report(
        runs,
        environment="dispatch:default",
        seeds=range(60),
        baseline="greedy",
        rng=np.random.default_rng(0),
        gap_policies=["models/dqn"],
    )
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0].startswith("dispatch:default: 60 paired episodes")
    assert "late_rate" in lines[1]
    for name in runs:
        row = next(line for line in lines if line.startswith(name))
        assert f"{runs[name][RETURN].mean():.2f}" in row
    dqn_row = next(line for line in lines if line.startswith("models/dqn"))
    assert "%" in dqn_row
