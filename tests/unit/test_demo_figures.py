"""The demo's figures on synthetic arrays: the clustered interval, gap closed, worse promotions;
and `demo --seed`: another seed, another world and event stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from dispatchloop.demo.figures import (
    PromotionCheck,
    arm_mean,
    gap_closed,
    live_vs_greedy,
    rolling_mean,
    worse_promotions,
)
from dispatchloop.demo.loop import DemoOptions, _simulate_args
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario


def test_singleton_clusters_give_scipys_welch_interval() -> None:
    rng = np.random.default_rng(0)
    live, greedy = rng.normal(-5.0, 2.0, 400), rng.normal(-6.0, 3.0, 300)
    ids = [str(i) for i in range(400)]
    result = live_vs_greedy(arm_mean(live, ids), arm_mean(greedy, ids[:300]))
    expected = stats.ttest_ind(live, greedy, equal_var=False).confidence_interval(0.99)
    assert result.mean_diff == pytest.approx(live.mean() - greedy.mean())
    assert result.ci.low == pytest.approx(expected.low, rel=1e-9)
    assert result.ci.high == pytest.approx(expected.high, rel=1e-9)


def test_correlated_episodes_widen_the_interval() -> None:
    """A shared shock per 19-decision episode: the clustered error is several times the naive."""
    rng = np.random.default_rng(1)
    episodes = np.repeat(np.arange(100), 19)
    rewards = rng.normal(0.0, 3.0, 100)[episodes] + rng.normal(0.0, 1.0, episodes.size)
    clustered = arm_mean(rewards, episodes.astype(str))
    naive = arm_mean(rewards, np.arange(rewards.size).astype(str))
    assert clustered.mean == pytest.approx(naive.mean)
    assert clustered.clusters == 100 and clustered.decisions == 1_900
    assert clustered.se > 3 * naive.se


def test_one_episode_has_no_interval() -> None:
    one = arm_mean(np.array([1.0, 2.0]), ["a", "a"])
    result = live_vs_greedy(one, arm_mean(np.array([0.0, 1.0]), ["b", "c"]))
    assert math.isinf(result.ci.low) and math.isinf(result.ci.high)


def test_gap_closed_scales_the_difference_by_the_simulated_gap() -> None:
    rng = np.random.default_rng(2)
    ids = [str(i) for i in range(500)]
    diff = live_vs_greedy(
        arm_mean(rng.normal(-5.5, 1.0, 500), ids), arm_mean(rng.normal(-6.0, 1.0, 500), ids)
    )
    gap = gap_closed(diff, greedy_level=-6.0, hindsight_level=-5.0)
    assert gap.share == pytest.approx(diff.mean_diff / 1.0)
    assert gap.ci.low == pytest.approx(diff.ci.low) and gap.ci.high == pytest.approx(diff.ci.high)
    with pytest.raises(ValueError, match="does not beat greedy"):
        gap_closed(diff, greedy_level=-5.0, hindsight_level=-5.0)


def test_worse_promotions_counts_negative_or_missing_paired_tests() -> None:
    checks = [
        PromotionCheck("v1", "greedy", 3.2, (1.0, 5.4)),
        PromotionCheck("v2", "v1", -0.4, (-1.0, 0.2)),
        PromotionCheck("v3", "v2", None, None),
        PromotionCheck("v4", "v3", 0.0, (-0.5, 0.5)),
    ]
    assert worse_promotions(checks) == 2
    assert worse_promotions([]) == 0


def test_rolling_mean_is_a_trailing_window() -> None:
    assert rolling_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]


def _first_events(world: Scenario, seed: int) -> list[tuple[float, float, str]]:
    events = simulated_events(
        world, RewardSettings(), LoggingPolicy(GreedyPolicy(), "greedy"), 25, seed=seed
    )
    return [
        (e["booking"]["pickup"]["lat"], e["booking"]["pickup"]["lon"], e["event_id"])
        for e in events
    ]


def test_seed_makes_another_world_and_event_stream() -> None:
    args = _simulate_args(DemoOptions(seed=7), world=__import__("pathlib").Path("w.json"))
    assert args[args.index("--seed") + 1] == "7"
    assert Scenario.seeded(0) == Scenario.default()
    assert Scenario.seeded(7).pickup_points != Scenario.seeded(0).pickup_points
    assert _first_events(Scenario.seeded(7), 7) == _first_events(Scenario.seeded(7), 7)
    zero, seven = _first_events(Scenario.seeded(0), 0), _first_events(Scenario.seeded(7), 7)
    assert all(a != b for a, b in zip(zero, seven, strict=True))


def test_the_live_view_shows_cycles_verdicts_and_rewards_by_version() -> None:
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from dispatchloop.daemon.cycles import Cycle
    from dispatchloop.demo.monitor import Snapshot
    from dispatchloop.demo.view import progress_line, render, sparkline
    from dispatchloop.replay.base import TimeWindow

    cycle = Cycle(
        id=1, scope="*", trigger="new_events", stage="done", outcome="promoted", version="v1",
        reasons=("all 8 gates passed",), timings={}, leader_id="h:1", leader_epoch=1,
        events_seen=3000, window=TimeWindow(), started_at=datetime.now(UTC), finished_at=None,
    )  # fmt: skip
    snapshot = Snapshot(
        seconds=12.0, events=4_000, events_per_s=99.0, cycles=[cycle], champion="v1",
        arms={"greedy": (3_000, -7.3), "v1": (1_000, -6.7)},
        series={"greedy": [-7.0, -7.5], "v1": [-6.0, -7.0, -6.5]},
    )  # fmt: skip
    out = io.StringIO()
    Console(file=out, width=160).print(render(snapshot))
    text = out.getvalue()
    for shown in ("4000 events", "champion: v1", "new_events", "promoted", "all 8 gates passed",
                  "-7.300", "-6.700"):  # fmt: skip
        assert shown in text, text
    assert "1 cycles done" in progress_line(snapshot)
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
