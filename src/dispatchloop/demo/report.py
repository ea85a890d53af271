"""From a finished loop run to its figures, its verdict and the `--json` object.

live = stored decisions whose model_version was promoted during the run (exploration
included: serving explores with the same epsilon whatever decides); greedy = stored
decisions of the `greedy` policy (serving's fallback before the first promotion).
Levels of greedy and hindsight per decision come from paired simulator episodes
(the same TEST seeds for both) in the world the simulator played (`world.json`):
the realised rewards come from that world, so the gap is measured in it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dispatchloop.demo.figures import (
    GapClosed,
    LiveVsGreedy,
    PromotionCheck,
    arm_mean,
    gap_closed,
    live_vs_greedy,
    worse_promotions,
)
from dispatchloop.demo.loop import LoopRun
from dispatchloop.demo.monitor import Decision, is_greedy
from dispatchloop.registry.sql import SqlRegistry
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, HindsightPolicy
from dispatchloop.sim.rollout import run_episodes, test_seeds
from dispatchloop.sim.scenario import Scenario


@dataclass(frozen=True)
class Levels:
    """Mean reward per decision of greedy and hindsight on paired simulator episodes."""

    greedy: float
    hindsight: float
    episodes: int


@dataclass(frozen=True)
class DemoFigures:
    """Everything the verdict, the plot and `--json` report."""

    decisions: list[Decision]
    promotions: list[PromotionCheck]
    comparison: LiveVsGreedy | None
    """None when no promoted model decided (no promotion, or none in time)."""
    gap: GapClosed | None
    levels: Levels
    cycles: int
    outcomes: dict[str, int]
    seconds: float
    run: LoopRun

    def to_json(self) -> dict[str, Any]:
        """The `--json` object (the issue's keys first; extra keys after them)."""
        comparison = self.comparison
        return {
            "live_vs_greedy": {
                "mean_diff": _num(comparison.mean_diff) if comparison else None,
                "ci99": [_num(comparison.ci.low), _num(comparison.ci.high)] if comparison else None,
                "live": _arm(comparison.live) if comparison else None,
                "greedy": _arm(comparison.greedy) if comparison else None,
            },
            "gap_closed": _num(self.gap.share) if self.gap else None,
            "gap_closed_ci99": [_num(self.gap.ci.low), _num(self.gap.ci.high)]
            if self.gap
            else None,
            "cycles": self.cycles,
            "promotions": len(self.promotions),
            "worse_promotions": worse_promotions(self.promotions),
            "seconds": round(self.seconds, 1),
            "cycle_outcomes": self.outcomes,
            "promoted": [p.version for p in self.promotions],
            "levels_per_decision": {
                "greedy": round(self.levels.greedy, 4),
                "hindsight": round(self.levels.hindsight, 4),
                "episodes": self.levels.episodes,
            },
            "events": self.run.last.events,
            "produced": self.run.produced,
            "exit_codes": dict(self.run.exit_codes),
            "stopped_because": self.run.stopped_because,
            "workdir": str(self.run.workdir),
        }


def _num(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def _arm(arm: Any) -> dict[str, Any]:
    return {"mean": _num(arm.mean), "decisions": arm.decisions, "episodes": arm.clusters}


def promotion_checks(registry: SqlRegistry) -> list[PromotionCheck]:
    """Each promotion of the champion alias, with the paired test of its decision record."""
    checks = []
    for move in registry.history("champion"):
        if move.event_type != "model.promoted":
            continue
        records = {r.record_id: r for r in registry.decisions(move.to_version)}
        record = records.get(move.decision_record_id or "")
        gate = None if record is None else next(
            (g for g in record.gates if g.name == "paired_sim"), None
        )  # fmt: skip
        checks.append(
            PromotionCheck(
                version=move.to_version,
                predecessor=None if record is None else record.champion,
                value=None if gate is None else gate.value,
                ci=None if gate is None else gate.ci,
            )
        )
    return checks


def world_levels(world: Scenario, reward: RewardSettings, episodes: int) -> Levels:
    """Greedy's and hindsight's mean reward per decision on the same TEST episodes."""
    seeds = test_seeds(episodes)
    greedy = run_episodes(GreedyPolicy(), world, reward, seeds).returns
    hindsight = run_episodes(HindsightPolicy(), world, reward, seeds).returns
    per = world.bookings_per_episode
    return Levels(float(np.mean(greedy)) / per, float(np.mean(hindsight)) / per, episodes)


def compute_figures(
    run: LoopRun,
    decisions: list[Decision],
    promotions: list[PromotionCheck],
    levels: Levels,
    seconds: float,
) -> DemoFigures:
    """Live vs greedy (episode-clustered 99 % interval), gap closed, promotions."""
    promoted = {p.version for p in promotions}
    live = [d for d in decisions if d.arm in promoted]
    greedy = [d for d in decisions if is_greedy(d.arm)]
    comparison = gap = None
    if live and greedy:
        comparison = live_vs_greedy(
            arm_mean(np.array([d.reward for d in live]), [d.episode for d in live]),
            arm_mean(np.array([d.reward for d in greedy]), [d.episode for d in greedy]),
        )
        if levels.hindsight > levels.greedy:
            gap = gap_closed(comparison, levels.greedy, levels.hindsight)
    finished = [c for c in run.last.cycles if c.outcome != "running"]
    outcomes: dict[str, int] = {}
    for cycle in finished:
        outcomes[cycle.outcome] = outcomes.get(cycle.outcome, 0) + 1
    return DemoFigures(
        decisions, promotions, comparison, gap, levels, len(finished), outcomes, seconds, run
    )


def verdict(figures: DemoFigures) -> str:
    """One paragraph: what happened, whether live beat greedy, and why we can say so."""
    n_prom = len(figures.promotions)
    worse = worse_promotions(figures.promotions)
    head = (
        f"In {figures.seconds / 60:.1f} minutes the loop ran {figures.cycles} "
        f"cycle{'s' if figures.cycles != 1 else ''} "
        f"({', '.join(f'{v} {k}' for k, v in sorted(figures.outcomes.items())) or 'none'}) "
        f"on {figures.run.last.events} stored decisions and promoted {n_prom} "
        f"version{'s' if n_prom != 1 else ''}"
        f"{f' ({worse} worse than its predecessor on the paired test)' if n_prom else ''}."
    )
    comparison = figures.comparison
    if comparison is None:
        return (
            f"{head} No promoted model decided any booking, so there is no live comparison "
            "with greedy: run longer (--cycles, --max-minutes) or look at the gate's reasons "
            "(`dispatchloop cycles list`)."
        )
    low, high = comparison.ci
    if low > 0:
        outcome = "beat greedy's, with the 99 % interval above zero"
    elif high < 0:
        outcome = "fell short of greedy's, with the 99 % interval below zero"
    else:
        outcome = "is not distinguishable from greedy's at 99 % (the interval spans zero)"
    gap = figures.gap
    share = (
        ""
        if gap is None
        else f"; that closes {100 * gap.share:.0f} % [{100 * gap.ci.low:.0f}, "
        f"{100 * gap.ci.high:.0f}] of the greedy→hindsight gap measured on "
        f"{figures.levels.episodes} paired simulator episodes of the same world"
    )
    return (
        f"{head} The realised reward per decision of the promoted models "
        f"({comparison.live.decisions} decisions, {comparison.live.clusters} episodes) "
        f"{outcome}: {comparison.mean_diff:+.3f} [{low:+.3f}, {high:+.3f}] against greedy's "
        f"{comparison.greedy.mean:.3f} ({comparison.greedy.decisions} decisions; episode-"
        f"clustered Welch interval, both with epsilon exploration){share}."
    )
