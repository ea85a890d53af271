"""The canary's statistics: verdicts, the record, and error rates under repeated looks.

A small version of benchmarks/canary.py (which runs 1,000 canaries a row): a few
hundred seeded synthetic canaries, each looked at 40 times.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from dispatchloop.evaluation.canary import (
    NO_OUTCOMES,
    ArmOutcomes,
    ArmTotals,
    CanaryThresholds,
    canary_record,
    cs_radius,
    judge_canary,
)
from dispatchloop.events import DecisionRecord
from dispatchloop.testing.canary import Arm, outcomes, run_canary

THRESHOLDS = CanaryThresholds(
    confidence=0.99, min_decisions=200, late_margin=0.02, cancel_margin=0.01,
    planned_decisions=10_000,
)  # fmt: skip
NOW = datetime(2026, 12, 2, 8, tzinfo=UTC)


def _arms(seed: int, champion: Arm, challenger: Arm, n_a: int, n_b: int) -> tuple[ArmOutcomes, ...]:
    rng = np.random.default_rng(seed)
    return outcomes(rng, champion, n_a), outcomes(rng, challenger, n_b)


def test_the_sequence_is_wider_than_a_single_look_and_shrinks_with_data() -> None:
    z = 2.5758  # one fixed look at 99 %
    sizes = (100, 1_000, 10_000, 100_000)
    radii = [cs_radius(1.0 / t, t, 0.01, 10_000) for t in sizes]
    assert radii == sorted(radii, reverse=True)
    assert all(r > z * math.sqrt(1.0 / t) for r, t in zip(radii, sizes, strict=True))
    assert cs_radius(1.0, 0, 0.01, 100) == math.inf


def test_a_clearly_worse_challenger_is_rolled_back_with_its_figures() -> None:
    champion, worse = _arms(1, Arm(), Arm(base_mean=-10.0), 4_000, 600)
    result = judge_canary(champion, worse, THRESHOLDS, expired=False)
    assert result.verdict == "rollback"
    assert result.reward.ci.high < 0 < -result.reward.estimate
    assert "worse" in result.reasons[-1]


def test_a_late_rate_breach_rolls_back_even_when_the_reward_is_better() -> None:
    champion, late = _arms(2, Arm(), Arm(base_mean=-4.0, late=0.30), 4_000, 800)
    result = judge_canary(champion, late, THRESHOLDS, expired=False)
    assert result.verdict == "rollback"
    assert result.reward.estimate > 0
    assert any("late rate rose" in reason for reason in result.reasons)


def test_a_clearly_better_challenger_is_promoted() -> None:
    champion, better = _arms(3, Arm(), Arm(base_mean=-6.0, late=0.05), 6_000, 1_500)
    result = judge_canary(champion, better, THRESHOLDS, expired=False)
    assert result.verdict == "promote", result.reasons
    assert result.reward.ci.low > 0 and result.late_rate.ci.low <= THRESHOLDS.late_margin


def test_too_few_decisions_continue_then_expire_as_insufficient_evidence() -> None:
    champion, better = _arms(4, Arm(), Arm(base_mean=-2.0), 5_000, 150)
    assert judge_canary(champion, better, THRESHOLDS, expired=False).verdict == "continue"
    expired = judge_canary(champion, better, THRESHOLDS, expired=True)
    assert expired.verdict == "insufficient_evidence"
    assert "150 challenger" in expired.reasons[0]
    empty = ArmOutcomes(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool))
    assert judge_canary(champion, empty, THRESHOLDS, expired=False).verdict == "continue"


def test_the_canary_record_carries_the_three_gates_and_round_trips() -> None:
    champion, worse = _arms(5, Arm(), Arm(base_mean=-10.0), 4_000, 600)
    result = judge_canary(champion, worse, THRESHOLDS, expired=False)
    record = canary_record(
        result, challenger="v2", champion="v1", thresholds=THRESHOLDS, started_at=NOW, now=NOW
    )
    assert (record.kind, record.verdict, record.seeds, record.candidate) == (
        "canary", "reject", "none", "v2"
    )  # fmt: skip
    gates = {gate.name: gate for gate in record.gates}
    assert list(gates) == ["canary.reward", "canary.late_rate", "canary.cancel_rate"]
    reward = gates["canary.reward"]
    assert reward.passed is False and reward.ci == tuple(result.reward.ci)
    assert reward.confidence == pytest.approx(1 - 0.01 / 3)
    assert f"{result.n_challenger} challenger vs {result.n_champion} champion" in reward.detail
    assert record.metrics["canary_reward_delta"] == pytest.approx(result.reward.estimate)
    assert DecisionRecord.model_validate_json(record.model_dump_json()) == record
    with pytest.raises(ValueError, match="continues"):
        canary_record(
            result._replace(verdict="continue"), challenger="v2", champion="v1",
            thresholds=THRESHOLDS, started_at=NOW, now=NOW,
        )  # fmt: skip


def _rates(challenger: Arm, reps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    runs = [
        run_canary(rng, Arm(), challenger, THRESHOLDS, every=500, total=20_000) for _ in range(reps)
    ]
    return {v: sum(r.verdict == v for r in runs) / reps for v in ("promote", "rollback")}


def test_an_identical_challenger_is_rarely_decided_despite_40_looks() -> None:
    rates = _rates(Arm(), reps=150, seed=11)
    # nominal error 1 %; 3/150 allows for chance (the benchmark measures it on 1,000)
    assert rates["promote"] + rates["rollback"] <= 0.02


def test_a_better_challenger_is_mostly_promoted_and_a_worse_one_rolled_back() -> None:
    better = _rates(Arm(base_mean=-7.0, late=0.08), reps=60, seed=12)
    worse = _rates(Arm(base_mean=-9.0, late=0.12), reps=60, seed=13)
    assert better["promote"] >= 0.8 and better["rollback"] == 0
    assert worse["rollback"] >= 0.8 and worse["promote"] == 0


def test_totals_hold_numpys_mean_and_variance_exactly_and_merge_look_by_look() -> None:
    rng = np.random.default_rng(3)
    arm = outcomes(rng, Arm(late=0.2), 5_000)
    whole = ArmTotals.of(arm)
    assert whole.reward_mean == float(np.mean(arm.reward))
    assert whole.reward_m2 / (arm.n - 1) == float(np.var(arm.reward, ddof=1))
    assert (whole.late, whole.cancelled) == (int(arm.late.sum()), int(arm.cancelled.sum()))
    cuts = sorted(rng.choice(np.arange(1, arm.n), 30, replace=False).tolist())
    merged = NO_OUTCOMES
    for lo, hi in zip([0, *cuts], [*cuts, arm.n], strict=True):
        part = ArmOutcomes(arm.reward[lo:hi], arm.late[lo:hi], arm.cancelled[lo:hi])
        merged = merged.plus(ArmTotals.of(part))
    assert (merged.n, merged.late, merged.cancelled) == (whole.n, whole.late, whole.cancelled)
    assert merged.reward_mean == pytest.approx(whole.reward_mean, rel=1e-12)
    assert merged.reward_m2 == pytest.approx(whole.reward_m2, rel=1e-12)
    assert ArmTotals.of(ArmOutcomes(arm.reward[:0], arm.late[:0], arm.cancelled[:0])) == NO_OUTCOMES
    assert NO_OUTCOMES.plus(whole) == whole.plus(NO_OUTCOMES) == whole


def test_a_look_on_totals_is_the_look_on_the_outcomes() -> None:
    """The daemon judges running totals; the verdict and figures are the arrays' own."""
    for seed, challenger in enumerate((Arm(), Arm(base_mean=-9.0), Arm(late=0.2))):
        champion_arm, challenger_arm = _arms(seed, Arm(), challenger, 3_000, 400)
        on_arrays = judge_canary(champion_arm, challenger_arm, THRESHOLDS, expired=False)
        on_totals = judge_canary(
            ArmTotals.of(champion_arm), ArmTotals.of(challenger_arm), THRESHOLDS, expired=False
        )
        assert on_totals == on_arrays
