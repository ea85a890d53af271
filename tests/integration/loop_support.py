"""In-memory judge, registry and publisher for tests of the loop's own logic.

They implement pipeline.protocols structurally, with the contract's essentials
(register always, compare-and-swap promotion, outbox rows relayed once), so the
runner and the scheduler are tested before the real gate and registry land.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dispatchloop.errors import TransientError
from dispatchloop.events import (
    DecisionRecord,
    DispatchOutcomeEvent,
    GateResult,
    ScenarioRef,
    Verdict,
)
from dispatchloop.pipeline.common import StopFlag
from dispatchloop.pipeline.fit import ScenarioFit
from dispatchloop.replay import open_store
from dispatchloop.replay.base import IncomingEvent
from dispatchloop.rl.artifacts import load_model
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario

N_EVENTS = 570  # 30 episodes of 19 bookings


def fill_store(url: str, n_events: int = N_EVENTS, seed: int = 7) -> None:
    """Events of an epsilon-greedy dispatcher, written through the real store."""
    store = open_store(url)
    try:
        batch = []
        for doc in simulated_events(
            Scenario.default(),
            RewardSettings(),
            LoggingPolicy(GreedyPolicy(), "greedy"),
            n_events,
            seed=seed,
            epsilon=0.3,
        ):
            raw = json.dumps(doc).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
    finally:
        store.close()


def record(
    candidate: str, champion: str | None, verdict: Verdict, fit: ScenarioFit
) -> DecisionRecord:
    passed = {"promote": True, "reject": False, "insufficient_evidence": None}[verdict]
    return DecisionRecord(
        record_id=uuid.uuid4().hex,
        candidate=candidate,
        champion=champion,
        verdict=verdict,
        gates=(GateResult(name="paired_sim", passed=passed, value=1.5 if passed else -0.5),),
        reasons=(f"test judge says {verdict}",),
        scenario=ScenarioRef(fingerprint=fit.fingerprint),
        created_at=datetime.now(UTC),
    )


@dataclass
class ScriptedJudge:
    """Returns the next scripted verdict; checks the candidate really is a verified model."""

    verdicts: list[Verdict]
    raise_error: Exception | None = None
    seen: list[tuple[Path, str | None]] = field(default_factory=list)

    def __call__(
        self, candidate_dir: Path, champion: str | None, fit: ScenarioFit, stop: StopFlag
    ) -> DecisionRecord:
        load_model(candidate_dir)  # raises if half-written or tampered with
        self.seen.append((candidate_dir, champion))
        if self.raise_error is not None:
            raise self.raise_error
        verdict = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
        return record(candidate_dir.name, champion, verdict, fit)


@dataclass
class MemoryRegistry:
    """Versions v1, v2 …; the champion alias moves by compare-and-swap; outbox rows."""

    versions: dict[str, tuple[Path, DecisionRecord]] = field(default_factory=dict)
    alias: str | None = None
    outbox: list[str] = field(default_factory=list)
    fail_register: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def champion(self) -> str | None:
        return self.alias

    def register(self, model_dir: Path, record: DecisionRecord) -> str:
        if self.fail_register is not None:
            raise self.fail_register
        with self.lock:
            version = f"v{len(self.versions) + 1}"
            self.versions[version] = (model_dir, record)
            return version

    def promote(self, version: str, record: DecisionRecord, expected_previous: str | None) -> None:
        with self.lock:
            if self.alias != expected_previous:
                raise TransientError(f"champion moved from {expected_previous} to {self.alias}")
            self.alias = version
            self.outbox.append(version)


@dataclass
class MemoryPublisher:
    registry: MemoryRegistry
    published: list[str] = field(default_factory=list)
    on_publish: Callable[[], None] | None = None

    def publish_pending(self) -> int:
        with self.registry.lock:
            pending = [v for v in self.registry.outbox if v not in self.published]
            self.published.extend(pending)
        return len(pending)
