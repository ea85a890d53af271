"""Live shadow scoring on a real store and a real registry: figures per version, sliding,
alias moves, a refused version, and the decision record a cycle writes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from loop_support import N_EVENTS, MemoryPublisher, MemoryRegistry, ScriptedJudge, fill_store
from prometheus_client import CollectorRegistry
from serving_support import make_served_model

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.leader import LeaderStatus
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.scheduler import CycleConfig, CycleRunner
from dispatchloop.daemon.shadow import ShadowMetrics, ShadowScorer
from dispatchloop.decisions.reward import event_reward
from dispatchloop.events import DecideRequest, DispatchOutcomeEvent
from dispatchloop.pipeline.child import ChildLimits
from dispatchloop.registry import SqlRegistry, open_registry
from dispatchloop.replay import open_store
from dispatchloop.replay.base import ReplayStore
from dispatchloop.serving.dispatcher import Routing, decide
from dispatchloop.serving.loader import load_from_registry
from dispatchloop.settings import RewardSettings, ShadowSettings

pytestmark = pytest.mark.integration

WINDOW = 300


@dataclass
class Rig:
    url: str
    store: ReplayStore
    registry: SqlRegistry
    prom: CollectorRegistry
    scorer: ShadowScorer
    models: Path

    def add_version(self, seed: int, alias: str | None, share: float | None = None) -> str:
        directory = make_served_model(self.models / f"m{seed}", seed)
        version = self.registry.register(directory, actor="test").version
        if alias is not None:
            self.promote(version, alias, share)
        return version

    def promote(self, version: str, alias: str, share: float | None = None) -> None:
        self.registry.promote(
            version, actor="test", reason="test", alias=alias,  # type: ignore[arg-type]
            traffic_share=share, force=True,
        )  # fmt: skip

    def value(self, name: str, **labels: str) -> float | None:
        return self.prom.get_sample_value(name, labels)

    def figure(self, name: str, version: str, alias: str, bound: str = "estimate") -> float | None:
        return self.value(name, model_version=version, alias=alias, bound=bound)

    def tick_until_idle(self) -> int:
        scored, ticks = 0, 0
        while (done := self.scorer.tick()) > 0:
            scored, ticks = scored + done, ticks + 1
            assert ticks < 20
        return scored


@pytest.fixture
def rig(store_url: str, tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(store_url, tmp_path)


@pytest.fixture
def sqlite_rig(sqlite_url: str, tmp_path: Path) -> Iterator[Rig]:
    """For the tests whose subject is not the store (a cycle costs a training child)."""
    yield from _rig(sqlite_url, tmp_path)


def _rig(store_url: str, tmp_path: Path) -> Iterator[Rig]:
    fill_store(store_url)
    prom = CollectorRegistry()
    registry = open_registry(store_url, tmp_path / "registry")
    scorer = ShadowScorer(
        store=open_store(store_url),
        registry=open_registry(store_url, tmp_path / "registry"),
        # untrained models rarely agree with the logger: a low ESS floor keeps SNIPS reported
        settings=ShadowSettings(window=WINDOW, batch=200, interval_s=0.1, min_ess=2.0),
        reward=RewardSettings(),
        metrics=ShadowMetrics(prom),
    )
    store = open_store(store_url)
    try:
        yield Rig(store_url, store, registry, prom, scorer, tmp_path / "models")
    finally:
        scorer.close()
        store.close()
        registry.close()


def _stored(store: ReplayStore) -> list[DispatchOutcomeEvent]:
    return [stored.event for stored in store.events_after(0, 100_000)]


def _expected(rig: Rig, version: str, events: list[DispatchOutcomeEvent]) -> dict[str, float]:
    """Agreement and SNIPS computed the slow way: serving's `decide`, event by event."""
    routing = Routing(champion=load_from_registry(rig.registry, version))
    rng = np.random.default_rng(0)
    agree, weights, rewards = [], [], []
    for event in events:
        request = DecideRequest(
            decided_at=event.decided_at, booking=event.booking, candidates=event.candidates
        )
        same = decide(request, routing, 0.0, rng).driver_id == event.action.driver_id
        agree.append(same)
        propensity = event.action.propensity
        weights.append(same / propensity if propensity else 0.0)
        rewards.append(event_reward(event, RewardSettings()))
    w, r = np.array(weights), np.array(rewards)
    return {
        "agreement": float(np.mean(agree)),
        "snips": float((w * r).sum() / w.sum()),
        "ess": float(w.sum() ** 2 / (w**2).sum()),
        "logged": float(r.mean()),
    }


def _check(rig: Rig, version: str, alias: str, expected: dict[str, float]) -> None:
    assert rig.figure("dispatchloop_shadow_agreement", version, alias) == pytest.approx(
        expected["agreement"]
    )
    snips = rig.figure("dispatchloop_shadow_snips_reward", version, alias)
    assert snips == pytest.approx(expected["snips"])
    low = rig.figure("dispatchloop_shadow_snips_reward", version, alias, "low")
    high = rig.figure("dispatchloop_shadow_snips_reward", version, alias, "high")
    assert low is not None and high is not None and low < snips < high
    ess = rig.value("dispatchloop_shadow_ess", model_version=version, alias=alias)
    assert ess == pytest.approx(expected["ess"])
    logged = rig.value("dispatchloop_shadow_logged_reward", bound="estimate")
    assert logged == pytest.approx(expected["logged"])


def test_champion_and_challenger_are_scored_on_the_last_window_and_slide_on(rig: Rig) -> None:
    assert rig.scorer.tick() == 0, "nothing to score before a champion exists"
    champion = rig.add_version(1, "champion")
    challenger = rig.add_version(2, "challenger", 0.1)
    assert rig.tick_until_idle() == WINDOW  # the last window of what was stored, in 2 ticks
    events = _stored(rig.store)
    _check(rig, champion, "champion", _expected(rig, champion, events[-WINDOW:]))
    _check(rig, challenger, "challenger", _expected(rig, challenger, events[-WINDOW:]))
    scored = {"model_version": challenger, "alias": "challenger"}
    assert rig.value("dispatchloop_shadow_events_scored_total", **scored) == WINDOW

    fill_store(rig.url, n_events=100, seed=8)  # new events arrive: the windows slide
    assert rig.tick_until_idle() == 100
    events = _stored(rig.store)
    assert len(events) == N_EVENTS + 100
    _check(rig, champion, "champion", _expected(rig, champion, events[-WINDOW:]))
    assert rig.value("dispatchloop_shadow_events_scored_total", **scored) == WINDOW + 100

    figures = rig.scorer.record_metrics()
    assert figures["shadow.champion.version_seq"] == 1
    assert figures["shadow.challenger.version_seq"] == 2
    assert figures["shadow.champion.events"] == WINDOW
    assert figures["shadow.champion.snips_lo"] < figures["shadow.champion.snips"]
    assert figures["shadow.logged.mean_reward"] == pytest.approx(
        _expected(rig, champion, events[-WINDOW:])["logged"]
    )


def test_a_refused_version_is_counted_and_skipped_and_old_series_are_dropped(rig: Rig) -> None:
    first = rig.add_version(1, "champion")
    rig.tick_until_idle()
    tampered = rig.add_version(3, "challenger", 0.1)
    weights = rig.registry.get(tampered).weights_path  # changed after its promotion
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    rig.tick_until_idle()
    assert rig.value("dispatchloop_shadow_errors_total", kind="refused") == 1
    assert [w.alias for w in rig.scorer.watched] == ["champion"]
    assert rig.figure("dispatchloop_shadow_agreement", tampered, "challenger") is None
    rig.scorer.tick()
    assert rig.value("dispatchloop_shadow_errors_total", kind="refused") == 1, "not retried"

    second = rig.add_version(4, "champion")
    rig.tick_until_idle()
    assert rig.figure("dispatchloop_shadow_agreement", first, "champion") is None, "dropped"
    agreement = rig.figure("dispatchloop_shadow_agreement", second, "champion")
    assert agreement is not None and 0.0 <= agreement <= 1.0
    assert [(w.alias, w.version, w.snapshot.events) for w in rig.scorer.watched] == [
        ("champion", second, WINDOW)
    ]


def test_falling_a_window_behind_skips_to_the_last_window_and_says_so(sqlite_rig: Rig) -> None:
    rig = sqlite_rig
    champion = rig.add_version(1, "champion")
    rig.tick_until_idle()
    fill_store(rig.url, n_events=2 * WINDOW, seed=9)  # a burst: more than a window unread
    assert rig.tick_until_idle() == WINDOW
    assert rig.value("dispatchloop_shadow_skips_total") == 1
    events = _stored(rig.store)
    _check(rig, champion, "champion", _expected(rig, champion, events[-WINDOW:]))


def test_the_cycle_writes_the_shadow_figures_into_its_decision_record(
    sqlite_rig: Rig, tmp_path: Path
) -> None:
    rig = sqlite_rig
    rig.add_version(1, "champion")
    rig.tick_until_idle()
    memory = MemoryRegistry()
    cycles = CycleStore(engine_of(rig.store))
    runner = CycleRunner(
        config=CycleConfig(
            models_dir=tmp_path / "candidates",
            store_url=rig.url,
            trainer="dqn",
            reward=RewardSettings(),
            offline_steps=20,
            sim_steps=0,
            distill_episodes=1,
            seed=0,
            min_events=N_EVENTS,
            train_window=None,
            train_limits=ChildLimits(120, 5),
            tune_limits=ChildLimits(120, 5),
            tune_interval=timedelta(days=7),
            tune_trials=1,
            tune_steps_per_trial=100,
            tune_dir=tmp_path / "tuning",
        ),
        store=rig.store,
        cycles=cycles,
        judge=ScriptedJudge(["reject"]),  # type: ignore[arg-type]
        registrar=memory,
        publisher=MemoryPublisher(memory),
        metrics=LoopMetrics(CollectorRegistry(), "test"),
        fence=lambda _epoch: True,
        shadow=rig.scorer.record_metrics,
    )
    leader = LeaderStatus("test", True, cycles.new_epoch("test"))
    result = runner.run("interval", leader, threading.Event())
    assert result.outcome == "rejected", result.reasons
    assert result.version is not None
    _, record = memory.versions[result.version]
    assert record.metrics == {**record.metrics, **rig.scorer.record_metrics()}
    assert record.metrics["shadow.champion.version_seq"] == 1
    assert 0.0 <= record.metrics["shadow.champion.agreement"] <= 1.0
    assert "shadow.challenger.agreement" not in record.metrics
    json.loads(record.model_dump_json())  # still a valid, serialisable record
