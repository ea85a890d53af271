"""Paired statistics against scipy.stats and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dispatchloop.evaluation.paired import (
    Interval,
    gap_share,
    paired_difference,
    summarize,
    t_interval,
)


def test_summary_matches_scipy_t_interval() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    summary = summarize(values)
    low, high = stats.t.interval(0.99, df=4, loc=values.mean(), scale=stats.sem(values))
    assert summary.n == 5
    assert summary.mean == pytest.approx(4.0)
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.ci.low == pytest.approx(low)
    assert summary.ci.high == pytest.approx(high)


def test_known_answer_two_values() -> None:
    # mean 1, sd sqrt(2), sem 1, t_{0.995, 1} = 63.6567...
    interval = t_interval([0.0, 2.0])
    assert interval.low == pytest.approx(1.0 - 63.65674, rel=1e-6)
    assert interval.high == pytest.approx(1.0 + 63.65674, rel=1e-6)


def test_other_confidence_is_narrower() -> None:
    values = np.arange(10.0)
    wide, narrow = t_interval(values, 0.99), t_interval(values, 0.95)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_zero_spread_collapses_to_the_mean() -> None:
    assert t_interval([3.0, 3.0, 3.0]) == Interval(3.0, 3.0)


def test_paired_difference_matches_scipy_paired_t_test() -> None:
    rng = np.random.default_rng(7)
    baseline = rng.normal(-50.0, 20.0, size=40)
    policy = baseline + rng.normal(1.5, 1.0, size=40)
    result = paired_difference(policy, baseline)
    diff = policy - baseline
    low, high = stats.t.interval(0.99, df=39, loc=diff.mean(), scale=stats.sem(diff))
    assert result.mean_diff == pytest.approx(diff.mean())
    assert result.ci == pytest.approx((low, high))
    # The pairing is the point: the unpaired interval of the policy alone is far wider.
    assert result.ci.above(0.0)
    assert summarize(policy).ci.high - summarize(policy).ci.low > 10 * (high - low)
    t_stat = stats.ttest_rel(policy, baseline).statistic
    assert t_stat == pytest.approx(diff.mean() / stats.sem(diff))


def test_paired_difference_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("values", "message"),
    [([1.0], "at least 2"), ([1.0, math.nan], "finite"), ([[1.0, 2.0]], "one value per")],
)
def test_bad_values_are_refused_with_a_reason(values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(values)


def test_bad_confidence_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.5)


def test_gap_share_known_answer_and_interval() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, size=200)
    greedy = -100.0 + 5.0 * noise
    hindsight = greedy + 10.0 + rng.normal(0.0, 0.5, size=200)
    dqn = greedy + 4.0 + rng.normal(0.0, 0.5, size=200)
    result = gap_share(dqn, greedy, hindsight, np.random.default_rng(1))
    expected = (dqn.mean() - greedy.mean()) / (hindsight.mean() - greedy.mean())
    assert result.share == pytest.approx(expected)
    assert result.ci is not None
    assert result.ci.contains(expected)
    assert 0.3 < result.ci.low < 0.4 < result.ci.high < 0.5


def test_gap_share_is_reproducible_with_the_same_seed() -> None:
    values = np.random.default_rng(3).normal(size=(3, 30))
    low, high, policy = values[0], values[0] + 2.0 + values[1], values[0] + 1.0 + values[2]
    first = gap_share(policy, low, high, np.random.default_rng(42))
    second = gap_share(policy, low, high, np.random.default_rng(42))
    assert first == second


def test_gap_share_without_a_gap_is_none() -> None:
    same = [1.0, 2.0, 3.0]
    assert gap_share([2.0, 2.0, 2.0], same, same, np.random.default_rng(0)).share is None


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=2, max_size=50),
    st.floats(min_value=-100.0, max_value=100.0),
)
def test_shifting_both_sides_leaves_the_difference_exact(values: list[float], shift: float) -> None:
    baseline = np.array(values)
    result = paired_difference(baseline + shift, baseline)
    assert result.mean_diff == pytest.approx(shift, abs=1e-6)
    assert result.ci.low == pytest.approx(shift, abs=1e-6)
    assert result.ci.high == pytest.approx(shift, abs=1e-6)
