"""Stage `judge`: the promotion gate on a trained candidate, in a spawned child.

The gate plays thousands of paired simulator episodes (tens of seconds of CPU), so
the daemon runs it in a child at the lowest priority, like training: ingest,
health and metrics keep their core. The decision record comes back whatever the
verdict; the cycle registers it with the candidate (`pipeline.registrar`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dispatchloop.evaluation.gate import GateThresholds
from dispatchloop.evaluation.gate_run import resolve_contender
from dispatchloop.evaluation.judge import judge
from dispatchloop.evaluation.logged import LoggedSample, from_dataset
from dispatchloop.events import DecisionRecord
from dispatchloop.pipeline.child import ChildLimits, run_in_child
from dispatchloop.pipeline.common import ProgressFn, StageProgress, StopFlag, no_progress
from dispatchloop.pipeline.fit import ScenarioFit
from dispatchloop.registry.base import ModelRegistry
from dispatchloop.replay import TimeWindow, open_store
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario


@dataclass(frozen=True)
class JudgeRequest:
    """Everything the child needs to judge, as plain picklable data."""

    candidate_dir: Path
    """The trained candidate's model directory (not yet registered)."""
    champion_dir: Path | None
    """The champion version's verified directory; None: nothing serves, judge against greedy."""
    scenario: dict[str, Any]
    """The fitted world (`Scenario.to_dict()`), the same the candidate trained in."""
    window: tuple[datetime | None, datetime | None]
    """The store window the world was fitted on (None: unbounded on that side); the
    off-policy gates read its events and the record names its actual bounds."""
    store_url: str
    """Where the logged events are."""
    reward: RewardSettings
    """The one reward function."""
    thresholds: GateThresholds
    """What the candidate must show (from the `gate` settings)."""


def judge_candidate(request: JudgeRequest, stop: StopFlag, progress: ProgressFn) -> DecisionRecord:
    """The gate's record for the candidate against the champion (or greedy)."""
    candidate = resolve_contender(str(request.candidate_dir), "candidate")
    champion_spec = "greedy" if request.champion_dir is None else str(request.champion_dir)
    champion = resolve_contender(champion_spec, "champion")
    scenario = Scenario.from_dict(request.scenario)
    logged, note, window = _logged(request, scenario)
    progress(StageProgress("judge", 0, None))
    judgement = judge(
        candidate,
        champion,
        scenario,
        request.reward,
        request.thresholds,
        logged=logged,
        logged_note=note,
        window=window,
        stop=stop.is_set,
    )
    return judgement.record


def _logged(
    request: JudgeRequest, scenario: Scenario
) -> tuple[LoggedSample | None, str, tuple[datetime, datetime] | None]:
    """The window's logged decisions for the off-policy gates, and the window's real bounds."""
    store = open_store(request.store_url, create=False)
    try:
        window = TimeWindow(*request.window)
        stats = store.stats()
        bounds = None
        first, last = window.start or stats.first_decided_at, window.end or stats.last_decided_at
        if first is not None and last is not None:
            bounds = (first, last)
        dataset = LoggedDataset.from_store(store, window, request.reward, scenario.arrays.demand)
    finally:
        store.close()
    if len(dataset) == 0:
        return None, "the window holds no logged transitions", bounds
    return from_dataset(dataset), f"{len(dataset)} logged transitions of the fitted window", bounds


class GateJudge:
    """The `Judge` the daemon plugs in: the champion from the registry, the gate in a child."""

    def __init__(
        self,
        registry: ModelRegistry,
        store_url: str,
        reward: RewardSettings,
        thresholds: GateThresholds,
        limits: ChildLimits,
    ) -> None:
        self._registry = registry
        self._store_url = store_url
        self._reward = reward
        self._thresholds = thresholds
        self._limits = limits

    def __call__(
        self, candidate_dir: Path, champion: str | None, fit: ScenarioFit, stop: StopFlag
    ) -> DecisionRecord:
        champion_dir = None
        if champion is not None:
            self._registry.verify(champion)  # a tampered champion is never the yardstick
            champion_dir = Path(self._registry.get(champion).directory)
        request = JudgeRequest(
            candidate_dir=candidate_dir,
            champion_dir=champion_dir,
            scenario=fit.scenario.to_dict(),
            window=(fit.window.start, fit.window.end),
            store_url=self._store_url,
            reward=self._reward,
            thresholds=self._thresholds,
        )
        return run_in_child(
            judge_candidate,
            request,
            limits=self._limits,
            stop=stop,
            progress=no_progress,
            name="judge",
        )
