"""The online shadow estimator: agrees with the batch SNIPS, slides, excludes, covers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dispatchloop.evaluation.offpolicy import LoggedDecisions, compare_policies, with_propensity
from dispatchloop.evaluation.shadow import ShadowWindow, wilson_interval


def _logged(rng: np.random.Generator, n: int, slots: int = 5) -> tuple[LoggedDecisions, np.ndarray]:
    """Random logged decisions (some without propensity) and a deterministic model's choices."""
    actions = rng.integers(0, slots, n)
    choices = np.where(rng.random(n) < 0.4, actions, rng.integers(0, slots, n))
    propensities = rng.uniform(0.1, 1.0, n)
    propensities[rng.random(n) < 0.1] = np.nan
    decisions = LoggedDecisions(
        episodes=np.arange(n) // 10,
        actions=actions,
        rewards=rng.normal(-3.0, 2.0, n) + (choices == actions),
        propensities=propensities,
        masks=np.ones((n, slots), dtype=bool),
    )
    return decisions, choices


def _window_of(decisions: LoggedDecisions, choices: np.ndarray, window: int) -> ShadowWindow:
    estimator = ShadowWindow(window, confidence=0.95)
    for start in range(0, decisions.size, 37):  # uneven batches, as ticks deliver them
        part = slice(start, start + 37)
        estimator.add(
            choices[part] == decisions.actions[part],
            decisions.propensities[part],
            decisions.rewards[part],
        )
    return estimator


def test_the_window_agrees_with_the_batch_snips_and_ess_of_offpolicy() -> None:
    rng = np.random.default_rng(3)
    decisions, choices = _logged(rng, 400)
    snapshot = _window_of(decisions, choices, window=1_000).snapshot()
    usable, excluded = with_propensity(decisions)
    keep = np.isfinite(decisions.propensities)
    one_hot = np.eye(5)[choices[keep]]
    batch = compare_policies(
        one_hot, one_hot, usable, np.zeros_like(one_hot), rng, confidence=0.95, n_bootstrap=400
    ).candidate
    assert snapshot.events == 400 and snapshot.excluded == excluded > 0
    assert snapshot.snips == pytest.approx(batch.snips.value, rel=1e-12)
    assert snapshot.ess == pytest.approx(batch.support.ess, rel=1e-12)
    assert snapshot.agreement == pytest.approx((choices == decisions.actions).mean())
    assert snapshot.logged_mean == pytest.approx(decisions.rewards.mean())
    # two honest intervals of the same ratio: the delta method and the episode bootstrap
    delta = snapshot.snips_ci.high - snapshot.snips_ci.low
    boot = batch.snips.ci.high - batch.snips.ci.low
    assert 0.6 < delta / boot < 1.6
    assert snapshot.snips_ci.contains(snapshot.snips)


def test_the_window_slides_and_forgets_what_left_it() -> None:
    rng = np.random.default_rng(5)
    decisions, choices = _logged(rng, 1_000)
    sliding = _window_of(decisions, choices, window=150).snapshot()
    tail = slice(850, 1_000)
    fresh = ShadowWindow(150)
    fresh.add(
        choices[tail] == decisions.actions[tail],
        decisions.propensities[tail],
        decisions.rewards[tail],
    )
    expected = fresh.snapshot()
    assert sliding.events == 150
    for field in ("excluded", "agreement", "snips", "ess", "logged_mean"):
        assert getattr(sliding, field) == pytest.approx(getattr(expected, field), rel=1e-9)
    assert sliding.snips_ci.low == pytest.approx(expected.snips_ci.low, rel=1e-9)


def test_a_batch_larger_than_the_window_keeps_its_newest_decisions() -> None:
    window = ShadowWindow(3)
    window.add(np.array([True] * 5), np.full(5, 0.5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    snapshot = window.snapshot()
    assert snapshot.events == 3 and snapshot.logged_mean == pytest.approx(4.0)


def test_decisions_without_propensity_count_but_carry_no_weight() -> None:
    window = ShadowWindow(10, min_ess=1.0)
    window.add(
        np.array([True, True, True, False]),
        np.array([0.5, np.nan, 0.25, 0.5]),
        np.array([1.0, 100.0, 3.0, -50.0]),
    )
    snapshot = window.snapshot()
    assert snapshot.events == 4 and snapshot.excluded == 1
    assert snapshot.agreement == pytest.approx(0.75)
    assert snapshot.snips == pytest.approx((2 * 1.0 + 4 * 3.0) / (2 + 4))  # 100 is not in it
    assert snapshot.ess == pytest.approx(36 / 20)


def test_undefined_figures_are_nan_never_a_made_up_number() -> None:
    empty = ShadowWindow(10).snapshot()
    assert empty.events == 0 and math.isnan(empty.agreement) and math.isnan(empty.snips)
    assert empty.ess == 0.0 and math.isnan(empty.logged_ci.low)
    never_agrees = ShadowWindow(10)
    never_agrees.add(np.zeros(4, dtype=bool), np.full(4, 0.5), np.ones(4))
    assert math.isnan(never_agrees.snapshot().snips) and never_agrees.snapshot().agreement == 0.0
    one_weighted = ShadowWindow(10, min_ess=1.0)
    one_weighted.add(np.array([True, False]), np.full(2, 0.5), np.ones(2))
    assert one_weighted.snapshot().ess == 1.0
    assert math.isnan(one_weighted.snapshot().snips)  # one decision: no spread to show
    thin = ShadowWindow(200, min_ess=30.0)
    thin.add(np.arange(100) < 20, np.full(100, 0.5), np.ones(100))
    assert thin.snapshot().ess == pytest.approx(20.0)
    assert math.isnan(thin.snapshot().snips) and math.isnan(thin.snapshot().snips_ci.high)
    thin.add(np.ones(15, dtype=bool), np.full(15, 0.5), np.ones(15))
    assert thin.snapshot().ess == pytest.approx(35.0) and thin.snapshot().snips == 1.0


def test_the_delta_interval_covers_the_true_value_at_about_its_level() -> None:
    """A small version of the coverage check: uniform logger over 4 slots, known truth.

    The model always picks slot 0, whose reward is N(1, 1); the others' N(0, 1), so its
    true value is 1; 200 windows of 400 decisions, the 95 % interval must cover ~95 %."""
    rng = np.random.default_rng(11)
    covered = 0
    repetitions = 200
    for _ in range(repetitions):
        actions = rng.integers(0, 4, 400)
        rewards = rng.normal(0.0, 1.0, 400) + (actions == 0)
        window = ShadowWindow(400, confidence=0.95)
        window.add(actions == 0, np.full(400, 0.25), rewards)
        covered += window.snapshot().snips_ci.contains(1.0)
    assert 0.9 <= covered / repetitions <= 0.99


def test_wilson_interval_stays_inside_zero_one_and_brackets_the_share() -> None:
    low, high = wilson_interval(0, 20, 1.96)
    assert low == 0.0 and 0.0 < high < 0.2
    low, high = wilson_interval(20, 20, 1.96)
    assert 0.8 < low < 1.0 and high == 1.0
    low, high = wilson_interval(30, 100, 1.96)
    assert low < 0.3 < high


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        ShadowWindow(0)
    with pytest.raises(ValueError, match="confidence"):
        ShadowWindow(10, confidence=1.0)
