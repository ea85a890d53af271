"""The cycle runner and the scheduler on a real store, with a real training child, and the
in-memory judge/registry/publisher of loop_support (the real ones are other issues)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import pytest
from loop_support import N_EVENTS, MemoryPublisher, MemoryRegistry, ScriptedJudge, fill_store
from prometheus_client import CollectorRegistry

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.leader import LeaderElector, LeaderStatus, lock_for
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.scheduler import (
    CycleConfig,
    CycleRunner,
    Scheduler,
    SchedulerTimes,
)
from dispatchloop.daemon.triggers import TriggerPolicy
from dispatchloop.errors import FatalError, InputError, TransientError
from dispatchloop.pipeline.child import ChildLimits
from dispatchloop.replay import open_store
from dispatchloop.replay.base import ReplayStore
from dispatchloop.settings import RewardSettings

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    url: str
    store: ReplayStore
    cycles: CycleStore
    judge: ScriptedJudge
    registry: MemoryRegistry
    publisher: MemoryPublisher
    metrics: LoopMetrics
    prom: CollectorRegistry
    config: CycleConfig
    fence_ok: bool = True

    def runner(self, status=lambda _text: None, checkpoint=lambda _name: None) -> CycleRunner:
        return CycleRunner(
            config=self.config,
            store=self.store,
            cycles=self.cycles,
            judge=self.judge,
            registrar=self.registry,
            publisher=self.publisher,
            metrics=self.metrics,
            fence=lambda _epoch: self.fence_ok,
            status=status,
            checkpoint=checkpoint,
        )

    def count(self, trigger: str, outcome: str) -> float:
        value = self.prom.get_sample_value(
            "dispatchloop_cycles_total", {"trigger": trigger, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def rig(sqlite_url: str, tmp_path: Path) -> Iterator[Rig]:
    fill_store(sqlite_url)
    store = open_store(sqlite_url)
    prom = CollectorRegistry()
    registry = MemoryRegistry()
    config = CycleConfig(
        models_dir=tmp_path / "candidates",
        store_url=sqlite_url,
        trainer="dqn",
        reward=RewardSettings(),
        offline_steps=50,
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
    )
    try:
        yield Rig(
            sqlite_url,
            store,
            CycleStore(engine_of(store)),
            ScriptedJudge(["promote"]),
            registry,
            MemoryPublisher(registry),
            LoopMetrics(prom, "test"),
            prom,
            config,
        )
    finally:
        store.close()


def _leader(rig: Rig) -> LeaderStatus:
    return LeaderStatus("test", True, rig.cycles.new_epoch("test"))


@pytest.mark.slow
def test_promote_then_reject_each_registers_a_version(rig: Rig):
    rig.judge.verdicts = ["promote", "reject"]
    first = rig.runner().run("interval", _leader(rig), threading.Event())
    assert (first.outcome, first.version) == ("promoted", "v1")
    assert rig.registry.alias == "v1" and rig.publisher.published == ["v1"]
    second = rig.runner().run("request", _leader(rig), threading.Event())
    assert (second.outcome, second.version) == ("rejected", "v2")
    assert rig.registry.alias == "v1", "a rejected candidate is registered, not promoted"
    assert rig.judge.seen[1][1] == "v1", "the second candidate is judged against the champion"
    row = rig.cycles.get(first.cycle_id)
    assert row is not None and row.outcome == "promoted" and row.version == "v1"
    assert set(row.timings) == {"fit", "train", "judge", "register", "promote", "publish"}
    assert row.window.end is not None and row.events_seen == N_EVENTS
    assert rig.count("interval", "promoted") == 1 and rig.count("request", "rejected") == 1
    assert rig.prom.get_sample_value("dispatchloop_champion_info", {"version": "v1"}) == 1


def test_each_stage_passes_its_checkpoint_after_its_row_names_it(rig: Rig):
    """The crash tests kill `run` at `cycle.<stage>`: the row must already say the stage."""
    passed: list[tuple[str, str]] = []

    def checkpoint(name: str) -> None:
        (row,) = rig.cycles.recent(1)
        passed.append((name, row.stage))

    rig.runner(checkpoint=checkpoint).run("interval", _leader(rig), threading.Event())
    stages = ["fit", "train", "judge", "register", "promote", "publish"]
    assert passed == [(f"cycle.{stage}", stage) for stage in stages]


def test_too_little_data_skips_with_a_reason_and_trains_nothing(rig: Rig):
    rig.config = replace(rig.config, min_events=N_EVENTS + 1)
    result = rig.runner().run("interval", _leader(rig), threading.Event())
    assert result.outcome == "skipped"
    assert f"{N_EVENTS} stored events, fewer than the {N_EVENTS + 1}" in result.reasons[0]
    assert rig.judge.seen == [] and not rig.config.models_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (InputError("the candidate has no ONNX file"), "failed"),
        (TransientError("the simulator pool is busy"), "failed"),
    ],
)
def test_judge_errors_fail_the_cycle_with_its_sentence(rig: Rig, error: Exception, outcome: str):
    rig.judge.raise_error = error
    result = rig.runner().run("drift", _leader(rig), threading.Event())
    assert result.outcome == outcome and result.reasons[-1] == str(error)
    assert rig.registry.versions == {}


@pytest.mark.slow
def test_a_fatal_error_is_recorded_then_stops_the_caller(rig: Rig):
    rig.judge.raise_error = FatalError("registry corrupt")
    with pytest.raises(FatalError):
        rig.runner().run("interval", _leader(rig), threading.Event())
    last = rig.cycles.last()
    assert last is not None and last.outcome == "failed" and "registry corrupt" in last.reasons[-1]


@pytest.mark.slow
def test_a_stale_leader_is_fenced_before_registering(rig: Rig):
    rig.fence_ok = False
    result = rig.runner().run("interval", _leader(rig), threading.Event())
    assert result.outcome == "aborted" and "lost leadership" in result.reasons[-1]
    assert rig.registry.versions == {} and rig.registry.alias is None


class RecordingNotifier:
    def __init__(self) -> None:
        self.watchdogs = 0
        self.statuses: list[str] = []

    def watchdog(self) -> None:
        self.watchdogs += 1

    def status(self, text: str) -> None:
        self.statuses.append(text)


@pytest.mark.slow
def test_the_scheduler_leads_runs_a_requested_cycle_and_pings_the_watchdog(rig: Rig):
    rig.cycles.request_retrain("test", "me@here")
    notifier = RecordingNotifier()
    runner = rig.runner(status=notifier.status)
    elector = LeaderElector(lock_for(rig.url), rig.cycles, "test")
    scheduler_store = open_store(rig.url)
    scheduler = Scheduler(
        runner=runner,
        elector=elector,
        cycles=CycleStore(engine_of(scheduler_store)),
        store=scheduler_store,
        worker_store=rig.store,
        publisher=rig.publisher,
        policy=TriggerPolicy(timedelta(hours=6), 10**9, 0.2, N_EVENTS),
        times=SchedulerTimes(
            check_interval_s=0.5,
            leader_interval_s=0.5,
            drift_interval_s=3600,
            drift_window=timedelta(days=1),
            drift_sample=1000,
            publish_interval_s=1.0,
            stop_bound_s=30,
            tick_s=0.1,
        ),
        metrics=rig.metrics,
        notifier=notifier,
        reward=RewardSettings(),
    )
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while rig.registry.alias is None or scheduler.readiness()[1]["last_cycle"] is None:
            assert time.monotonic() < deadline, "no cycle ran"
            time.sleep(0.2)
        time.sleep(1.0)
        ready, detail = scheduler.readiness()
        assert ready and detail["leader"] and detail["scheduler_alive"]
        cycles = rig.cycles.recent(5)
        assert [c.trigger for c in cycles] == ["request"], "one request, one cycle"
        assert rig.cycles.pending_requests() == []
        assert notifier.watchdogs > 10
        assert any(text.startswith("cycle ") for text in notifier.statuses)
        assert rig.prom.get_sample_value("dispatchloop_leader", {"instance_id": "test"}) == 1
    finally:
        stop.set()
        thread.join(timeout=40)
        scheduler_store.close()
    assert not thread.is_alive()
    assert rig.prom.get_sample_value("dispatchloop_leader", {"instance_id": "test"}) == 0


def test_the_scheduler_sees_drift_between_the_training_window_and_the_recent_one(
    sqlite_url: str, tmp_path: Path
):
    import dataclasses
    import json
    from datetime import UTC, datetime

    from dispatchloop.events import DispatchOutcomeEvent
    from dispatchloop.replay.base import IncomingEvent, TimeWindow
    from dispatchloop.sim.policies import GreedyPolicy
    from dispatchloop.sim.producer import DEFAULT_START, LoggingPolicy, simulated_events
    from dispatchloop.sim.scenario import Scenario

    now = datetime.now(UTC)
    store = open_store(sqlite_url)
    base = Scenario.default()
    for scenario, start, seed in (
        (base, DEFAULT_START, 1),
        (dataclasses.replace(base, n_drivers=3), now - timedelta(days=55), 2),  # 1 episode/day
    ):
        docs = simulated_events(
            scenario,
            RewardSettings(),
            LoggingPolicy(GreedyPolicy(), "greedy"),
            950,
            seed=seed,
            start=start,
        )
        raws = [json.dumps(doc).encode() for doc in docs]
        store.write_batch(
            [IncomingEvent(DispatchOutcomeEvent.model_validate_json(r), r) for r in raws]
        )
    cycles = CycleStore(engine_of(store))
    epoch = cycles.new_epoch("test")
    trained = cycles.start("interval", "test", epoch, events_seen=950)
    cycles.advance(trained, "fit", {}, window=TimeWindow(DEFAULT_START, now - timedelta(days=100)))
    cycles.finish(trained, "rejected", ["test"])
    prom = CollectorRegistry()
    scheduler = Scheduler(
        runner=None,
        elector=LeaderElector(lock_for(sqlite_url), cycles, "test"),
        cycles=cycles,
        store=store,
        worker_store=store,
        publisher=None,
        policy=TriggerPolicy(timedelta(hours=6), 10**9, 0.2, 100),
        times=SchedulerTimes(1, 1, 1, timedelta(days=60), 10_000, 1, 10),
        metrics=LoopMetrics(prom, "test"),
        notifier=RecordingNotifier(),
        reward=RewardSettings(),
    )
    try:
        scheduler._compute_drift()  # what the worker runs every drift_check_interval_s
        report = scheduler._drift
        assert report is not None and "candidates" in report.drifted
        assert prom.get_sample_value("dispatchloop_drift_psi", {"feature": "candidates"}) > 0.2
        from dispatchloop.daemon.triggers import TriggerState, due_trigger

        last = cycles.last()
        state = TriggerState(now, last, 1900, 0, report)
        assert due_trigger(scheduler._policy, state) == "drift"
    finally:
        store.close()
