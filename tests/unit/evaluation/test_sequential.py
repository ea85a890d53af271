"""The sequential design's error rates, checked by simulation on synthetic paired differences.

The boundary logic is pure, so thousands of synthetic gates run in seconds; the
same check on simulator episodes (200 repetitions) is in benchmarks/gate.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dispatchloop.evaluation.sequential import (
    SequentialDesign,
    analyse_look,
    make_design,
    obrien_fleming_spent,
    sequential_test,
)


def test_design_spends_exactly_alpha_over_equally_spaced_looks() -> None:
    design = make_design(2_000, 5, 0.99)
    assert design.looks == (400, 800, 1_200, 1_600, 2_000)
    assert sum(design.spend) == pytest.approx(0.01)
    assert all(s > 0 for s in design.spend)
    # O'Brien-Fleming type: early looks spend almost nothing, the last one the most.
    assert list(design.spend) == sorted(design.spend)
    assert obrien_fleming_spent(1.0, 0.01) == pytest.approx(0.01)


def _promote_rate(design: SequentialDesign, effect: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    promoted = 0
    for _ in range(reps):
        diffs = rng.normal(effect, 20.0, design.looks[-1])
        promoted += sequential_test(diffs, design, 0.0).outcome == "clears"
    return promoted / reps


def test_type_one_error_of_an_identical_candidate_stays_within_alpha() -> None:
    """Candidate = champion in distribution: promotions are false positives (one side of alpha)."""
    design = make_design(200, 5, 0.90)  # a loose 10 % budget, so the rate is measurable
    reps = 2_000
    rate = _promote_rate(design, 0.0, reps, seed=1)
    one_sided = design.alpha / 2
    assert rate <= one_sided + 3 * np.sqrt(one_sided * (1 - one_sided) / reps)


def test_peeking_without_spending_would_break_the_error_rate() -> None:
    """The same five looks, each at the full level: what the design protects against."""
    naive = SequentialDesign((40, 80, 120, 160, 200), 0.10, (0.10,) * 5)
    rate = _promote_rate(naive, 0.0, 2_000, seed=2)
    assert rate > 0.05 + 0.015  # well above the nominal one-sided 5 %


def test_a_clear_effect_stops_early_and_a_harmful_one_is_refused() -> None:
    design = make_design(2_000, 5, 0.99)
    rng = np.random.default_rng(3)
    better = sequential_test(rng.normal(6.0, 20.0, 2_000), design, 0.0)
    worse = sequential_test(rng.normal(-6.0, 20.0, 2_000), design, 0.0)
    assert better.outcome == "clears" and better.final.number < 5
    assert worse.outcome == "falls_short" and worse.final.number < 5
    assert "stopped early" in better.describe()


def test_zero_spread_straddles_the_margin_and_nan_is_refused() -> None:
    design = make_design(100, 2, 0.99)
    same = sequential_test(np.zeros(100), design, 0.0)
    assert same.outcome == "undecided" and same.final.episodes == 100
    with pytest.raises(ValueError, match="finite"):
        analyse_look(np.full(100, np.nan), design, 1, 0.0)
    with pytest.raises(ValueError, match="too few"):
        make_design(5, 5, 0.99)
