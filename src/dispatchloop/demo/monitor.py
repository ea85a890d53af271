"""Read-only view of a running loop: stored events, cycles, champion, realised rewards.

The demo polls what `run` writes (the store, the cycles table, the registry) and
never writes to it; rewards are recomputed from the stored outcomes with the same
reward function the trainer uses (`decisions.reward.event_reward`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from dispatchloop.daemon.cycles import Cycle, CycleStore, engine_of
from dispatchloop.decisions.reward import event_reward
from dispatchloop.registry import open_registry
from dispatchloop.registry.sql import SqlRegistry
from dispatchloop.replay import open_store
from dispatchloop.replay.base import ReplayStore, TimeWindow
from dispatchloop.serving.dispatcher import GREEDY_POLICY
from dispatchloop.settings import RewardSettings

SERIES_POINTS = 24
"""Recent per-episode means kept per arm for the sparkline."""


@dataclass(frozen=True)
class Decision:
    """One stored decision, reduced to what the figures need."""

    episode: str
    """Its episode (the clusters of the interval)."""
    arm: str
    """The deciding model_version, or the policy name when no model decided (`greedy`)."""
    reward: float
    """Realised reward under the run's reward weights."""


@dataclass
class Snapshot:
    """What the live view shows at one poll."""

    seconds: float
    events: int
    events_per_s: float
    cycles: list[Cycle]
    champion: str | None
    arms: dict[str, tuple[int, float]]
    """Per arm: decisions so far and their mean realised reward."""
    series: dict[str, list[float]]
    """Per arm: recent per-episode mean rewards (oldest first)."""

    @property
    def finished_cycles(self) -> int:
        return sum(cycle.outcome != "running" for cycle in self.cycles)


@dataclass
class _Tally:
    count: int = 0
    total: float = 0.0
    episodes: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class LoopMonitor:
    """Polls the store, cycles and registry of one demo run (opened after `run` is ready,
    so the daemon has already migrated them)."""

    def __init__(self, store_url: str, registry_root: Path, reward: RewardSettings) -> None:
        self._store: ReplayStore = open_store(store_url, create=False)
        self._cycles = CycleStore(engine_of(self._store))
        self._registry_args = (store_url, registry_root)
        self._registry: SqlRegistry | None = None
        self._reward = reward
        self._seen: set[str] = set()
        self._since: TimeWindow = TimeWindow()
        self._tallies: dict[str, _Tally] = defaultdict(_Tally)
        self._started = time.monotonic()
        self._last: tuple[float, int] = (self._started, 0)

    def poll(self) -> Snapshot:
        """Read what changed since the last poll (events at most one day older are re-read,
        deduplicated by id, since ingest order is not decided_at order)."""
        for event in self._store.iter_events(self._since):
            key = str(event.event_id)
            if key in self._seen:
                continue
            self._seen.add(key)
            arm = event.action.model_version or event.action.policy
            tally = self._tallies[arm]
            reward = event_reward(event, self._reward)
            tally.count += 1
            tally.total += reward
            tally.episodes[event.episode_id].append(reward)
            start = event.decided_at - timedelta(days=1)
            if self._since.start is None or start > self._since.start:
                self._since = TimeWindow(start=start)
        now, events = time.monotonic(), self._store.count_events(TimeWindow())
        rate = (events - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, events)
        return Snapshot(
            seconds=now - self._started,
            events=events,
            events_per_s=rate,
            cycles=sorted(self._cycles.recent(limit=50), key=lambda cycle: cycle.id),
            champion=self._champion(),
            arms={arm: (t.count, t.total / t.count) for arm, t in self._tallies.items()},
            series={
                arm: [sum(r) / len(r) for r in list(t.episodes.values())[-SERIES_POINTS:]]
                for arm, t in self._tallies.items()
            },
        )

    def decisions(self) -> list[Decision]:
        """Every stored decision in decided_at order (for the final figures)."""
        return [
            Decision(
                e.episode_id,
                e.action.model_version or e.action.policy,
                event_reward(e, self._reward),
            )
            for e in self._store.iter_events(TimeWindow())
        ]

    def registry(self) -> SqlRegistry:
        if self._registry is None:
            self._registry = open_registry(*self._registry_args)
        return self._registry

    def _champion(self) -> str | None:
        if not self._registry_args[1].is_dir():
            return None
        state = self.registry().alias("champion")
        return None if state is None else state.version

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
        self._store.close()


def is_greedy(arm: str) -> bool:
    return arm == GREEDY_POLICY
