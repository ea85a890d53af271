"""The cycle and the scheduler with a canary: a promoted candidate goes to `challenger` at
the canary share (the first one, with no champion yet, straight to champion), and while
the canary runs no new cycle starts. Real store, real registry and outbox, real broker;
the judge is loop_support's scripted one (the gate is not the subject here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from canary_support import ACTOR, canary_started, outcome_events, start_canary, write_events
from loop_support import N_EVENTS, ScriptedJudge, fill_store
from prometheus_client import CollectorRegistry
from registry_support import make_model, passing_record
from test_loop_runner import RecordingNotifier
from test_registry_contract import flip_one_byte

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.leader import LeaderElector, LeaderStatus, lock_for
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.scheduler import CycleConfig, CycleRunner, Scheduler, SchedulerTimes
from dispatchloop.daemon.triggers import TriggerPolicy
from dispatchloop.pipeline.canary import CanaryConfig, RegistryCanary
from dispatchloop.pipeline.child import ChildLimits
from dispatchloop.pipeline.registrar import OutboxRelay, RegistryRegistrar
from dispatchloop.registry import open_registry
from dispatchloop.registry.outbox import publisher_from_settings
from dispatchloop.replay import open_store
from dispatchloop.settings import KafkaSettings, LoopSettings, RegistrySettings, RewardSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


TIMES = SchedulerTimes(
    check_interval_s=0.2, leader_interval_s=0.5, drift_interval_s=3600,
    drift_window=timedelta(days=1), drift_sample=1000, publish_interval_s=1.0,
    stop_bound_s=30, canary_interval_s=0.5, tick_s=0.1,
)  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def test_a_promotion_starts_a_canary_and_the_scheduler_waits_for_its_verdict(
    sqlite_url: str, kafka_bootstrap: str, topic_name: str, tmp_path: Path
):
    fill_store(sqlite_url)
    store, scheduler_store = open_store(sqlite_url), open_store(sqlite_url)
    registry = open_registry(sqlite_url, tmp_path / "registry")
    prom = CollectorRegistry()
    metrics = LoopMetrics(prom, "test")
    cycles = CycleStore(engine_of(store))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, models_topic=f"{topic_name}.models")
    publisher = OutboxRelay(
        publisher_from_settings(registry, kafka, RegistrySettings(), clock=_now)
    )
    canary = RegistryCanary(
        registry, store, RewardSettings(),
        CanaryConfig.from_settings(LoopSettings(canary_share=0.1)), clock=_now,
    )  # fmt: skip
    config = CycleConfig(
        models_dir=tmp_path / "candidates", store_url=sqlite_url, trainer="dqn",
        reward=RewardSettings(), offline_steps=50, sim_steps=0, distill_episodes=1, seed=0,
        min_events=N_EVENTS, train_window=None, train_limits=ChildLimits(120, 5),
        tune_limits=ChildLimits(120, 5), tune_interval=timedelta(days=7), tune_trials=1,
        tune_steps_per_trial=100, tune_dir=tmp_path / "tuning",
    )  # fmt: skip
    notifier = RecordingNotifier()
    runner = CycleRunner(
        config=config, store=store, cycles=cycles, judge=ScriptedJudge(["promote"]),
        registrar=RegistryRegistrar(registry), publisher=publisher, metrics=metrics,
        fence=lambda _epoch: True, status=notifier.status, canary=canary,
    )  # fmt: skip
    try:
        leader = LeaderStatus("test", True, cycles.new_epoch("test"))
        first = runner.run("interval", leader, threading.Event())
        assert (first.outcome, first.version) == ("promoted", "v1")
        assert registry.alias("champion").version == "v1", "no champion yet: straight to it"
        assert registry.alias("challenger") is None

        second = runner.run("request", leader, threading.Event())
        assert (second.outcome, second.version) == ("promoted", "v2")
        assert "v2 to challenger at 10% (canary) next to champion v1" in second.reasons[-1]
        assert registry.alias("champion").version == "v1"
        challenger = registry.alias("challenger")
        assert (challenger.version, challenger.traffic_share) == ("v2", 0.1)
        move = registry.history("challenger")[-1]
        gate_record = registry.decisions("v2")[-1]
        assert move.decision_record_id == gate_record.record_id and gate_record.kind == "gate"
        assert registry.outbox_backlog() == 0, "the cycle published the canary's start"

        # The canary runs (no outcome of v2 yet): a requested cycle waits for its verdict.
        cycles.request_retrain("test", "me@here")
        scheduler = Scheduler(
            runner=runner,
            elector=LeaderElector(lock_for(sqlite_url), cycles, "test"),
            cycles=CycleStore(engine_of(scheduler_store)),
            store=scheduler_store,
            worker_store=store,
            publisher=publisher,
            policy=TriggerPolicy(timedelta(hours=6), 10**9, 0.2, N_EVENTS),
            times=TIMES,
            metrics=metrics,
            notifier=notifier,
            reward=RewardSettings(),
            canary=canary,
        )
        stop = threading.Event()
        thread = threading.Thread(target=scheduler.run, args=(stop,))
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not any("no new cycle until it is decided" in s for s in notifier.statuses):
                assert time.monotonic() < deadline, notifier.statuses[-5:]
                time.sleep(0.1)
            time.sleep(1.5)  # several trigger checks and canary looks
            _, detail = scheduler.readiness()
            assert detail["canary"]["running"] and detail["canary"]["challenger"] == "v2"
            assert detail["canary"]["verdict"] == "continue"
            assert len(cycles.pending_requests()) == 1, "the request waits for the canary"
            assert [c.version for c in cycles.recent(5)] == ["v2", "v1"]
            assert prom.get_sample_value("dispatchloop_canary_active") == 1
            assert prom.get_sample_value("dispatchloop_canary_share") == 0.1
            looks = prom.get_sample_value(
                "dispatchloop_canary_verdicts_total", {"verdict": "continue"}
            )
            assert looks is not None and looks >= 2
        finally:
            stop.set()
            thread.join(timeout=40)
        assert not thread.is_alive()
    finally:
        registry.close()
        store.close()
        scheduler_store.close()


def test_a_better_challenger_whose_files_changed_is_rolled_back_not_promoted(
    sqlite_url: str, tmp_path: Path
):
    registry = open_registry(sqlite_url, tmp_path / "registry")
    store = open_store(sqlite_url)
    try:
        v1 = registry.register(make_model(tmp_path / "m1", 1), actor=ACTOR).version
        registry.attach_decision(v1, passing_record(v1))
        registry.promote(v1, actor=ACTOR, reason="first champion")
        v2 = start_canary(registry, tmp_path, 2, v1)
        started = canary_started(registry)
        rng = np.random.default_rng(8)
        write_events(
            sqlite_url,
            outcome_events(rng, v1, 900, started, late=0.1, cost_scale=1.0)
            + outcome_events(rng, v2, 300, started, late=0.0, cost_scale=0.4),
        )
        flip_one_byte(registry.get(v2).weights_path)
        loop = LoopSettings(canary_share=0.1, canary_min_decisions=100)
        shadow = {"shadow.champion.agreement": 0.81, "shadow.challenger.snips": -3.5}
        canary = RegistryCanary(
            registry, store, RewardSettings(), CanaryConfig.from_settings(loop), clock=_now,
            shadow=lambda: shadow,
        )  # fmt: skip
        check = canary.check(lambda: True)
        assert check.action == "rolled_back" and check.record is not None
        assert check.record.metrics.items() >= shadow.items()  # the live shadow figures too
        assert "canary_reward_delta" in check.record.metrics
        stored = [r for r in registry.decisions(v2) if r.kind == "canary"]
        assert [r.metrics for r in stored] == [check.record.metrics]
        assert check.result is not None and check.result.verdict == "promote"
        gates = {gate.name: gate.passed for gate in check.record.gates}
        assert gates["canary.reward"] is True and gates["canary.integrity"] is False
        assert check.record.verdict == "reject"
        assert registry.alias("champion").version == v1
        move = registry.history("challenger")[-1]
        assert (move.event_type, move.to_version, move.traffic_share) == (
            "model.rolled_back", v1, 0.0
        )  # fmt: skip
        assert move.decision_record_id == check.record.record_id
        assert canary.check(lambda: True).action == "none", "the canary is over"
    finally:
        registry.close()
        store.close()


def test_each_look_counts_only_what_was_stored_since_and_agrees_with_a_recount(
    store_url: str, tmp_path: Path
):
    """The canary keeps each arm's totals between looks: a look reads the events stored
    since the last one, and its figures are those of a recount from the start. Outcomes
    of decisions taken before the canary, arriving during it, count for neither arm."""
    registry = open_registry(store_url, tmp_path / "registry")
    store = open_store(store_url)
    read: list[int] = []
    iter_events_after = store.iter_events_after

    def counting(position: int, batch_size: int = 1_000) -> Iterator[Any]:
        for stored in iter_events_after(position, batch_size):
            read.append(stored.position)
            yield stored

    store.iter_events_after = counting  # type: ignore[method-assign]
    loop = LoopSettings(canary_share=0.1, canary_min_decisions=100_000)  # never decisive
    try:
        v1 = registry.register(make_model(tmp_path / "m1", 1), actor=ACTOR).version
        registry.attach_decision(v1, passing_record(v1))
        registry.promote(v1, actor=ACTOR, reason="first champion")
        write_events(store_url, outcome_events(np.random.default_rng(1), v1, 200,
                     _now() - timedelta(hours=2), late=0.1, cost_scale=1.0))  # fmt: skip
        v2 = start_canary(registry, tmp_path, 2, v1)
        started = canary_started(registry)
        canary = RegistryCanary(
            registry, store, RewardSettings(), CanaryConfig.from_settings(loop), clock=_now
        )
        rng = np.random.default_rng(2)
        for look, (n_champion, n_challenger) in enumerate(((300, 40), (500, 60), (0, 0))):
            late_arrivals = outcome_events(
                rng, v1, 50, started - timedelta(hours=1), late=0.5, cost_scale=3.0
            )
            write_events(
                store_url,
                outcome_events(rng, v1, n_champion, started, late=0.1, cost_scale=1.0)
                + outcome_events(rng, v2, n_challenger, started, late=0.0, cost_scale=0.5),
            )
            write_events(store_url, late_arrivals)  # stored after the canary's first event
            read.clear()
            check = canary.check(lambda: True)
            assert check.action == "continue" and check.result is not None
            assert len(read) == 50 + n_champion + n_challenger, f"look {look}"
        recount = RegistryCanary(
            registry, open_store(store_url), RewardSettings(),
            CanaryConfig.from_settings(loop), clock=_now,
        ).check(lambda: True).result  # fmt: skip
        assert recount is not None and check.result is not None
        assert (check.result.n_champion, check.result.n_challenger) == (800, 100)
        assert (recount.n_champion, recount.n_challenger) == (800, 100)
        for mine, theirs in zip(check.result[1:4], recount[1:4], strict=True):
            assert mine.estimate == pytest.approx(theirs.estimate, rel=1e-9, abs=1e-12)
            assert mine.ci.low == pytest.approx(theirs.ci.low, rel=1e-9, abs=1e-12)
    finally:
        registry.close()
        store.close()
