"""The cycle runner and the scheduler of `dispatchloop run`.

A cycle (DESIGN.md, "The loop"): fit → (tune, when due) → train → judge →
register (always, with the decision record) → promote or not → publish. Every
stage entered is written to the cycle's row first, so a crash leaves a row
that says where it stopped (the next leader marks it aborted). Training and
tuning run in spawned children; the judge, the registry and the outbox
publisher are injected (pipeline.protocols).

Errors decide what happens next (errors.py): InputError → the cycle `failed`
with its sentence (nothing to retry until the data or settings change);
TransientError → `failed`, the next trigger tries again; FatalError → the
cycle `failed` and the daemon stops (systemd restarts it, or an operator
looks). A stop request ends the cycle `aborted`.

The scheduler's own loop never blocks on a stage: it runs cycles (and the
outbox relay) on one worker thread, and keeps sending WATCHDOG=1, checking
the leader lock and reading the triggers every tick — a hung scheduler loop
stops the watchdog pings and systemd restarts the process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from dispatchloop.daemon.cycles import Cycle, CycleStore, Outcome, Trigger
from dispatchloop.daemon.leader import LeaderElector, LeaderStatus
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.triggers import (
    MAX_ABORTED_RETRIES,
    DriftReport,
    TriggerPolicy,
    TriggerState,
    drift_report,
    due_trigger,
    event_features,
    tune_due,
)
from dispatchloop.errors import DispatchloopError, FatalError, InputError, TransientError
from dispatchloop.events import DecisionRecord
from dispatchloop.pipeline.canary import CanaryCheck
from dispatchloop.pipeline.child import (
    ChildCrashedError,
    ChildFailedError,
    ChildLimits,
    ChildTimeoutError,
)
from dispatchloop.pipeline.common import StageProgress, StageStoppedError, remove_staging
from dispatchloop.pipeline.fit import NotEnoughDataError, ScenarioFit, fit_scenario
from dispatchloop.pipeline.protocols import Canary, Judge, Publisher, Registrar
from dispatchloop.pipeline.train import Trainer, TrainSpec, train_in_child
from dispatchloop.pipeline.tune import TuneSpec, tune_params
from dispatchloop.registry.base import Checkpoint, no_checkpoint
from dispatchloop.replay.base import ReplayStore, StoreUnavailableError, TimeWindow
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings, Settings

log = logging.getLogger(__name__)

TUNE_OUTPUT = "optimal_config.json"


@dataclass(frozen=True)
class CycleConfig:
    """What a cycle needs to know, taken from settings once by the entry point."""

    models_dir: Path
    """Where candidate directories are created (one per cycle)."""
    store_url: str
    """The store, for the training child to open (it cannot share our connections)."""
    trainer: Trainer
    """dqn or distill."""
    reward: RewardSettings
    """The reward weights."""
    offline_steps: int
    """dqn: gradient steps on logged transitions."""
    sim_steps: int
    """dqn: simulator steps."""
    distill_episodes: int
    """distill: TRAIN episodes per round."""
    seed: int
    """Training seed."""
    min_events: int
    """Fewer events in the window skip the cycle."""
    train_window: timedelta | None
    """Train on the last this-long (None: all stored events)."""
    train_limits: ChildLimits
    """Time budget and stop grace of the training child."""
    tune_limits: ChildLimits
    """Time budget and stop grace of the tuning child."""
    tune_interval: timedelta
    """Re-tune at most this often."""
    tune_trials: int
    """Trials per re-tuning run."""
    tune_steps_per_trial: int
    """Simulator steps per trial."""
    tune_dir: Path
    """Holds the study (SQLite) and optimal_config.json (config + warm start)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleConfig:
        loop = settings.loop
        return cls(
            models_dir=settings.data_dir / "candidates",
            store_url=settings.resolved_store_url,
            trainer=loop.trainer,
            reward=settings.reward,
            offline_steps=loop.offline_steps,
            sim_steps=loop.sim_steps,
            distill_episodes=loop.distill_episodes,
            seed=loop.seed,
            min_events=loop.min_events,
            train_window=timedelta(seconds=loop.train_window_s) if loop.train_window_s else None,
            train_limits=ChildLimits(loop.train_timeout_s, loop.stop_grace_s),
            tune_limits=ChildLimits(loop.tune_timeout_s, loop.stop_grace_s),
            tune_interval=timedelta(seconds=loop.tune_interval_s),
            tune_trials=loop.tune_trials,
            tune_steps_per_trial=loop.tune_steps_per_trial,
            tune_dir=settings.data_dir / "tuning",
        )


@dataclass(frozen=True)
class CycleResult:
    """How one cycle ended."""

    cycle_id: int
    """Its row."""
    outcome: Outcome
    """The final outcome written to the row."""
    version: str | None
    """The registered version, if it got that far."""
    reasons: tuple[str, ...]
    """Why (skip, failure, the gate's reasons)."""


@dataclass
class _Run:
    """Mutable bookkeeping of the cycle in progress (one thread)."""

    cycle_id: int
    trigger: Trigger
    timings: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    reasons: list[str] = field(default_factory=list)


class CycleRunner:
    """Runs one cycle with injected store, judge, registry, publisher and leadership fence."""

    def __init__(
        self,
        *,
        config: CycleConfig,
        store: ReplayStore,
        cycles: CycleStore,
        judge: Judge,
        registrar: Registrar,
        publisher: Publisher,
        metrics: LoopMetrics,
        fence: Callable[[int], bool],
        status: Callable[[str], None] = lambda _text: None,
        checkpoint: Checkpoint = no_checkpoint,
        shadow: Callable[[], Mapping[str, float]] = dict,
        canary: Canary | None = None,
    ) -> None:
        """`shadow`: the live shadow figures to copy into each decision record's metrics
        (daemon.shadow.ShadowScorer.record_metrics; default none). `canary` None (or its
        share 0): a passing candidate becomes champion at once."""
        self.config = config
        self._canary = canary
        self._checkpoint = checkpoint
        self._store = store
        self._cycles = cycles
        self._judge = judge
        self._registrar = registrar
        self._publisher = publisher
        self._metrics = metrics
        self._fence = fence
        self._status = status
        self._shadow = shadow

    def run(
        self,
        trigger: Trigger,
        leader: LeaderStatus,
        stop: threading.Event,
        request_ids: Sequence[int] = (),
    ) -> CycleResult:
        """One cycle, recorded as a row; raises only FatalError (after recording it)."""
        epoch = leader.epoch
        if epoch is None:
            raise TransientError("only the leader runs cycles")
        events = self._count(TimeWindow())
        run = _Run(
            self._cycles.start(trigger, leader.instance_id, epoch, events_seen=events), trigger
        )
        self._cycles.consume_requests(request_ids, run.cycle_id)
        log.info("cycle %d started (trigger %s, %d stored events)", run.cycle_id, trigger, events)
        try:
            outcome = self._stages(run, epoch, stop)
        except NotEnoughDataError as exc:
            return self._finish(run, "skipped", str(exc))
        except StageStoppedError as exc:
            return self._finish(run, "aborted", str(exc))
        except InputError as exc:
            self._metrics.errors.labels("input").inc()
            return self._finish(run, "failed", str(exc))
        except TransientError as exc:
            self._metrics.errors.labels("transient").inc()
            return self._finish(run, "failed", str(exc))
        except FatalError as exc:
            self._metrics.errors.labels("fatal").inc()
            self._finish(run, "failed", f"fatal: {exc}")
            raise
        return self._finish(run, outcome, None)

    # --- the stages -----------------------------------------------------------------

    def _stages(self, run: _Run, epoch: int, stop: threading.Event) -> Outcome:
        fit = self._timed(run, "fit", lambda: self._fit(run))
        self._check(stop)
        config = self._maybe_tune(run, fit, stop)
        self._check(stop)
        candidate = self._timed(run, "train", lambda: self._train(run, fit, config, stop))
        champion = self._registrar.champion()
        challenger = self._canary.challenger() if self._canary is not None else None
        self._metrics.champion.info({"version": champion or ""})
        record = self._timed(run, "judge", lambda: self._judge(candidate, champion, fit, stop))
        record = with_metrics(record, self._shadow())
        self._count_gates(record)
        self._check(stop)
        self._fenced(epoch, "register")
        run.version = self._timed(
            run, "register", lambda: self._registrar.register(candidate, record)
        )
        self._cycles.advance(run.cycle_id, "register", run.timings, version=run.version)
        run.reasons.extend(record.reasons)
        if record.verdict != "promote":
            self._publish(run)
            return "rejected" if record.verdict == "reject" else "insufficient_evidence"
        self._fenced(epoch, "promote")
        version = run.version
        canary = self._canary
        if canary is not None and canary.share > 0.0 and champion is not None:
            # Live traffic decides: the challenger serves a share next to the champion.
            self._timed(run, "promote", lambda: canary.start(version, record, challenger))
            run.reasons.append(
                f"{version} to challenger at {canary.share:.0%} (canary) next to champion "
                f"{champion}; live outcomes decide"
            )
            self._publish(run)
            return "promoted"
        self._timed(run, "promote", lambda: self._registrar.promote(version, record, champion))
        self._metrics.last_promotion.set(time.time())
        self._metrics.champion.info({"version": version})
        self._publish(run)
        return "promoted"

    def _fit(self, run: _Run) -> ScenarioFit:
        now = datetime.now(UTC)
        start = now - self.config.train_window if self.config.train_window else None
        fit = fit_scenario(self._store, TimeWindow(start, now), self.config.min_events)
        self._cycles.advance(run.cycle_id, "fit", run.timings, window=fit.window)
        return fit

    def _maybe_tune(self, run: _Run, fit: ScenarioFit, stop: threading.Event) -> DQNConfig:
        """Re-tune when due (warm-started); a failed tuning keeps the previous parameters."""
        output = self.config.tune_dir / TUNE_OUTPUT
        tuned_at = datetime.fromtimestamp(output.stat().st_mtime, UTC) if output.exists() else None
        clock = tuned_at or self._cycles.oldest_start()
        if clock is not None and tune_due(clock, datetime.now(UTC), self.config.tune_interval):
            try:
                self._timed(run, "tune", lambda: self._tune(fit, output, stop))
            except StageStoppedError:
                raise
            except (TransientError, InputError) as exc:
                self._metrics.child_failures.labels("tune", _kind(exc)).inc()
                run.reasons.append(f"re-tuning failed, trained with the previous parameters: {exc}")
        if not output.exists():
            return DQNConfig()
        try:
            return DQNConfig.from_json_file(output)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the tuned parameters {str(output)!r}: {exc}") from exc

    def _tune(self, fit: ScenarioFit, output: Path, stop: threading.Event) -> None:
        from dispatchloop.pipeline.child import run_in_child  # noqa: PLC0415

        self.config.tune_dir.mkdir(parents=True, exist_ok=True)
        warm = _best_params(output)
        spec = TuneSpec(
            storage_url=f"sqlite:///{(self.config.tune_dir / 'study.db').resolve()}",
            study_name=f"loop-{fit.fingerprint}",
            fit=fit,
            reward=self.config.reward,
            n_trials=self.config.tune_trials,
            steps_per_trial=self.config.tune_steps_per_trial,
            timeout_s=self.config.tune_limits.timeout_s * 0.9,
            warm_start=warm,
            output=output,
            seed=self.config.seed,
        )
        result = run_in_child(
            _tune_target, spec, limits=self.config.tune_limits, stop=stop, name="tune"
        )
        if result.best_value is not None:
            self._metrics.tune_best.set(result.best_value)

    def _train(self, run: _Run, fit: ScenarioFit, config: DQNConfig, stop: threading.Event) -> Path:
        out = self.config.models_dir / f"cycle-{run.cycle_id:06d}-{uuid.uuid4().hex[:6]}"
        spec = TrainSpec(
            out=out,
            trainer=self.config.trainer,
            fit=fit,
            reward=self.config.reward,
            config=config,
            offline_steps=self.config.offline_steps,
            sim_steps=self.config.sim_steps,
            distill_episodes=self.config.distill_episodes,
            seed=self.config.seed + run.cycle_id,
        )
        try:
            model = train_in_child(
                spec, self.config.store_url, stop, self.config.train_limits, self._progress
            )
        except (ChildTimeoutError, ChildCrashedError, ChildFailedError, StageStoppedError) as exc:
            self._metrics.child_failures.labels("train", _kind(exc)).inc()
            raise
        self._metrics.final_loss.set(model.final_loss)
        return model.model_dir

    def _publish(self, run: _Run) -> None:
        """Relay the outbox now; a broker outage leaves the rows for the periodic relay."""
        try:
            self._timed(run, "publish", self._publisher.publish_pending)
        except TransientError as exc:
            self._metrics.errors.labels("transient").inc()
            run.reasons.append(f"publishing deferred to the outbox relay: {exc}")

    # --- bookkeeping ----------------------------------------------------------------

    def _timed(self, run: _Run, stage: str, work: Callable[[], Any]) -> Any:
        self._cycles.advance(run.cycle_id, stage, run.timings)
        self._status(f"cycle {run.cycle_id} ({run.trigger}): {stage}")
        self._checkpoint(f"cycle.{stage}")
        started = time.monotonic()
        try:
            return work()
        finally:
            seconds = time.monotonic() - started
            run.timings[stage] = round(seconds, 3)
            self._metrics.stage_seconds.labels(stage).observe(seconds)

    def _fenced(self, epoch: int, what: str) -> None:
        if not self._fence(epoch):
            raise StageStoppedError(f"lost leadership before {what}; the new leader goes on")

    @staticmethod
    def _check(stop: threading.Event) -> None:
        if stop.is_set():
            raise StageStoppedError("the daemon is stopping")

    def _progress(self, report: StageProgress) -> None:
        total = f"/{report.total:g}" if report.total else ""
        self._status(f"{report.stage}: {report.done:g}{total}")

    def _count(self, window: TimeWindow) -> int:
        try:
            return self._store.count_events(window)
        except StoreUnavailableError as exc:
            raise TransientError(f"cannot count stored events: {exc}") from exc

    def _count_gates(self, record: DecisionRecord) -> None:
        for gate in record.gates:
            passed = "undecided" if gate.passed is None else str(gate.passed).lower()
            self._metrics.gate_outcomes.labels(gate.name, passed).inc()
            if gate.value is not None:
                self._metrics.candidate_delta.labels(gate.name).set(gate.value)

    def _finish(self, run: _Run, outcome: Outcome, reason: str | None) -> CycleResult:
        if reason:
            run.reasons.append(reason)
        if outcome in ("failed", "aborted"):
            remove_staging_in(self.config.models_dir)
        self._cycles.finish(run.cycle_id, outcome, run.reasons, run.timings, run.version)
        self._metrics.cycles.labels(run.trigger, outcome).inc()
        if outcome in ("promoted", "rejected", "insufficient_evidence"):
            self._metrics.last_cycle_success.set(time.time())
        log.info("cycle %d: %s %s", run.cycle_id, outcome, "; ".join(run.reasons))
        return CycleResult(run.cycle_id, outcome, run.version, tuple(run.reasons))


def with_metrics(record: DecisionRecord, extra: Mapping[str, float]) -> DecisionRecord:
    """The record with `extra` added to its metrics (validated: finite floats only)."""
    if not extra:
        return record
    return DecisionRecord.model_validate(
        {**record.model_dump(), "metrics": {**record.metrics, **extra}}
    )


def remove_staging_in(models_dir: Path) -> None:
    """Remove staging directories (`.name.*`) a killed save left in `models_dir`."""
    if models_dir.is_dir():
        for staging in models_dir.glob(".cycle-*"):
            remove_staging(staging.parent / staging.name.split(".")[1])


def _kind(exc: DispatchloopError) -> str:
    if isinstance(exc, StageStoppedError):
        return "stopped"
    if isinstance(exc, ChildTimeoutError):
        return "timeout"
    if isinstance(exc, ChildCrashedError):
        return "crashed"
    return "failed"


def _best_params(output: Path) -> Mapping[str, Any] | None:
    import json  # noqa: PLC0415

    try:
        params = json.loads(output.read_text()).get("best_params")
    except (OSError, ValueError, AttributeError):
        return None
    return params if isinstance(params, dict) else None


def _tune_target(spec: TuneSpec, stop: Any, _progress: Any) -> Any:
    return tune_params(spec, stop)


class Notifier(Protocol):
    """The service manager's side of the lifecycle (daemon.systemd.SystemdNotifier)."""

    def watchdog(self) -> None:
        """WATCHDOG=1: the scheduler loop is alive."""
        ...

    def status(self, text: str) -> None:
        """STATUS=<text>: what the daemon is doing, one line."""
        ...


@dataclass(frozen=True)
class SchedulerTimes:
    """The scheduler's periods and bounds (from settings.loop)."""

    check_interval_s: float
    """Trigger checks (a few cheap queries)."""
    leader_interval_s: float
    """Leader lock liveness check / takeover attempt."""
    drift_interval_s: float
    """Drift computation (reads two windows of events; runs on the worker)."""
    drift_window: timedelta
    """The recent window compared with the last training window."""
    drift_sample: int
    """Events sampled per window."""
    publish_interval_s: float
    """Outbox relay while leading."""
    stop_bound_s: float
    """How long a stop waits for the running cycle to end (TimeoutStopSec minus a margin)."""
    canary_interval_s: float = 300.0
    """Looks at a running canary's outcomes (reads the events since its start; on the worker)."""
    tick_s: float = 0.5
    """The loop's period: WATCHDOG=1 is sent every tick."""


class Scheduler:
    """The loop that decides; the one worker thread that does (cycles, drift, outbox relay)."""

    def __init__(
        self,
        *,
        runner: CycleRunner | None,
        elector: LeaderElector,
        cycles: CycleStore,
        store: ReplayStore,
        worker_store: ReplayStore,
        publisher: Publisher | None,
        policy: TriggerPolicy,
        times: SchedulerTimes,
        metrics: LoopMetrics,
        notifier: Notifier,
        reward: RewardSettings,
        canary: Canary | None = None,
    ) -> None:
        """`runner` and `publisher` None: lead and report, run no cycles (no registry yet).

        `store` is used by the scheduler's thread, `worker_store` by the worker's (the
        store contract allows one thread per instance). `canary` is looked at on the
        worker; while one runs, no cycle starts (its verdict must come first)."""
        self._canary = canary
        self._canary_view: CanaryCheck | None = None
        """The last look (None: not looked since leading or since the last cycle)."""
        self._due = {"leader": 0.0, "check": 0.0, "drift": 0.0, "publish": 0.0, "canary": 0.0}
        self._runner = runner
        self._elector = elector
        self._cycles = cycles
        self._store = store
        self._worker_store = worker_store
        self._publisher = publisher
        self._policy = policy
        self._times = times
        self._metrics = metrics
        self._notifier = notifier
        self._reward = reward
        self._drift: DriftReport | None = None
        self._last: Cycle | None = None
        self._last_error: str | None = None
        self._tick_at = time.monotonic()
        self._job: Future[Any] | None = None
        self._job_kind = ""
        self._cycle_stop = threading.Event()

    # --- readiness ------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Leader status, the scheduler loop's liveness and the last cycle's outcome."""
        status = self._elector.status
        alive = time.monotonic() - self._tick_at < max(10.0, 20 * self._times.tick_s)
        last = self._last
        finished = last is not None and last.outcome != "running"
        last_ok = not finished or (last is not None and last.outcome != "failed")
        detail = {
            "scheduler_alive": alive,
            "leader": status.leader,
            "leader_epoch": status.epoch,
            "instance": status.instance_id,
            "cycle_running": self._job_kind == "cycle",
            "last_cycle": None
            if last is None
            else {"id": last.id, "outcome": last.outcome, "stage": last.stage},
            "last_cycle_ok": last_ok,
            "scheduler_error": self._last_error,
            "canary": _canary_detail(self._canary_view),
        }
        return alive and last_ok, detail

    # --- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: returns normally, or raises FatalError from a cycle."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatchloop-cycle")
        due = self._due
        try:
            while not stop.is_set():
                self._tick(executor, due)
                stop.wait(self._times.tick_s)
        finally:
            self._stop_worker(executor)

    def _tick(self, executor: ThreadPoolExecutor, due: dict[str, float]) -> None:
        now = time.monotonic()
        self._tick_at = now
        self._notifier.watchdog()
        self._collect()
        if now >= due["leader"]:
            due["leader"] = now + self._times.leader_interval_s
            self._poll_leader()
        leading = self._elector.status.leader
        if now >= due["check"]:
            due["check"] = now + self._times.check_interval_s
            self._guarded(lambda: self._check(executor, leading))
        if self._runner is None or self._publisher is None:
            return
        if not leading:
            self._canary_view = None  # the next leader's look is the truth
        if self._job is None and leading and self._canary is not None and now >= due["canary"]:
            due["canary"] = now + self._times.canary_interval_s
            self._submit(executor, "canary", self._look_at_canary)
        if self._job is None and leading and now >= due["drift"]:
            due["drift"] = now + self._times.drift_interval_s
            self._submit(executor, "drift", self._compute_drift)
        if self._job is None and leading and now >= due["publish"]:
            due["publish"] = now + self._times.publish_interval_s
            self._submit(executor, "publish", self._publisher.publish_pending)

    def _poll_leader(self) -> None:
        status = self._elector.poll()
        self._metrics.set_leader(status.leader, status.epoch)
        if not status.leader and self._job_kind == "cycle":
            log.error("lost leadership during a cycle: stopping it")
            self._cycle_stop.set()
        if status.leader and self._job is None and self._runner is not None:
            remove_staging_in(self._runner.config.models_dir)

    def _check(self, executor: ThreadPoolExecutor, leading: bool) -> None:
        self._last = self._cycles.last()
        self._export_history()
        if self._runner is None:
            role = "leading" if leading else "following"
            self._notifier.status(f"{role}; ingesting; no cycles (no registry/gate plugged in)")
            return
        if not leading or self._job is not None:
            return
        epoch = self._elector.status.epoch
        if self._last is not None and self._last.outcome == "running" and epoch is not None:
            # No cycle of ours runs, yet a row says one does: its end was never written.
            self._cycles.abort_orphans(epoch, own=True)
            self._last = self._cycles.last()
        waiting = self._canary_wait()
        if waiting is not None:
            self._notifier.status(waiting)
            return
        runner = self._runner
        requests = self._cycles.pending_requests()
        try:
            events = self._store.count_events()
        except StoreUnavailableError as exc:
            raise TransientError(f"cannot count stored events: {exc}") from exc
        recent = self._cycles.recent(MAX_ABORTED_RETRIES + 2)
        aborted = next(
            (i for i, cycle in enumerate(recent) if cycle.outcome != "aborted"), len(recent)
        )
        state = TriggerState(
            datetime.now(UTC), self._last, events, len(requests), self._drift, aborted
        )
        trigger = due_trigger(self._policy, state)
        if trigger is None:
            self._notifier.status(self._idle_status(events))
            return
        self._cycle_stop.clear()
        self._drift = None  # consumed: the next comparison is against the new window
        status = self._elector.status
        ids = [request.id for request in requests]
        self._submit(executor, "cycle", lambda: runner.run(trigger, status, self._cycle_stop, ids))

    def _canary_wait(self) -> str | None:
        """Why no cycle may start now because of the canary, or None."""
        if self._canary is None:
            return None
        view = self._canary_view
        if view is None:
            return "leading: looking at the canary before any new cycle"
        if view.state is None or view.action not in ("continue", "fenced"):
            return None
        state, result = view.state, view.result
        figures = ""
        if result is not None:
            low, high = result.reward.ci
            figures = (
                f", {result.n_challenger} vs {result.n_champion} decisions, reward "
                f"{result.reward.estimate:+.3g} [{low:+.3g}, {high:+.3g}]"
            )
        return (
            f"leading: canary {state.challenger} at {state.share:.0%} vs champion "
            f"{state.champion} since {state.started_at:%Y-%m-%d %H:%M} UTC{figures}; "
            "no new cycle until it is decided"
        )

    def _look_at_canary(self) -> None:
        """On the worker: one look, its metrics and log line; publish a move at once."""
        assert self._canary is not None
        epoch = self._elector.status.epoch
        check = self._canary.check(lambda: epoch is not None and self._elector.still_leading(epoch))
        self._canary_view = check
        self._report_canary(check)
        if check.action in ("promoted", "rolled_back", "ended") and self._publisher is not None:
            try:
                self._publisher.publish_pending()
            except TransientError as exc:
                self._metrics.errors.labels("transient").inc()
                log.warning("canary: publishing deferred to the outbox relay: %s", exc)

    def _report_canary(self, check: CanaryCheck) -> None:
        metrics, state, result = self._metrics, check.state, check.result
        running = state is not None and check.action in ("continue", "fenced")
        metrics.canary_active.set(1 if running else 0)
        metrics.canary_share.set(state.share if running and state is not None else 0.0)
        if result is not None:
            metrics.observe_canary(result)
        if state is None:
            return
        reasons = "; ".join(result.reasons) if result is not None else "no figures"
        line = (
            f"canary {state.challenger} ({state.share:.0%}) vs champion {state.champion}: "
            f"{check.action}: {reasons}"
        )
        if check.record is not None:
            line += f" (decision record {check.record.record_id})"
        if check.action == "rolled_back":
            log.warning(line)
        else:
            log.info(line)
        if check.action == "promoted":
            metrics.champion.info({"version": state.challenger})
            metrics.last_promotion.set(time.time())

    def _export_history(self) -> None:
        """Timestamps from the shared table: right on every instance and after a restart."""
        success = self._cycles.last(("promoted", "rejected", "insufficient_evidence"))
        if success is not None and success.finished_at is not None:
            self._metrics.last_cycle_success.set(success.finished_at.timestamp())
        promoted = self._cycles.last(("promoted",))
        if promoted is not None and promoted.finished_at is not None:
            self._metrics.last_promotion.set(promoted.finished_at.timestamp())

    def _idle_status(self, events: int) -> str:
        last = self._last
        where = "no cycle yet" if last is None else f"last cycle {last.id} {last.outcome}"
        return f"leading: {events} stored events, {where}"

    def _compute_drift(self) -> None:
        trained = self._cycles.last(("promoted", "rejected", "insufficient_evidence"))
        if trained is None:
            return
        now = datetime.now(UTC)
        reference = self._features(trained.window)
        recent = self._features(TimeWindow(now - self._times.drift_window, now))
        report = drift_report(reference, recent, self._policy.drift_threshold)
        for feature, score in report.scores.items():
            self._metrics.drift.labels(feature).set(score)
        self._drift = report
        if report.drifted:
            log.warning("drift in %s (PSI %.3f)", ", ".join(report.drifted), report.max_score)

    def _features(self, window: TimeWindow) -> dict[str, Any]:
        try:
            total = self._worker_store.count_events(window)
            every = max(1, -(-total // self._times.drift_sample))
            sample = (
                event
                for index, event in enumerate(self._worker_store.iter_events(window))
                if index % every == 0
            )
            return event_features(sample, self._reward)
        except StoreUnavailableError as exc:
            raise TransientError(f"cannot read events for the drift check: {exc}") from exc

    # --- the worker -----------------------------------------------------------------

    def _submit(self, executor: ThreadPoolExecutor, kind: str, work: Callable[[], Any]) -> None:
        self._job_kind = kind
        self._job = executor.submit(work)

    def _collect(self) -> None:
        """Take a finished job's result; FatalError stops the daemon, others are counted."""
        job = self._job
        if job is None or not job.done():
            return
        kind, self._job, self._job_kind = self._job_kind, None, ""
        try:
            job.result()
        except FatalError:
            raise
        except (TransientError, InputError) as exc:
            self._metrics.errors.labels(
                "transient" if isinstance(exc, TransientError) else "input"
            ).inc()
            self._last_error = f"{kind}: {exc}"
            log.warning("%s failed: %s", kind, exc)
        else:
            if kind == "cycle":
                self._guarded(lambda: setattr(self, "_last", self._cycles.last()))
        if kind == "cycle":  # it may have started a canary: look before the next trigger
            self._canary_view = None
            self._due["canary"] = 0.0
        elif kind == "canary":
            self._due["check"] = 0.0

    def _guarded(self, work: Callable[[], None]) -> None:
        """The scheduler loop survives a database outage: count it, retry next period."""
        try:
            work()
        except TransientError as exc:
            self._metrics.errors.labels("transient").inc()
            self._last_error = str(exc)
            log.warning("scheduler: %s", exc)
        else:
            self._last_error = None

    def _stop_worker(self, executor: ThreadPoolExecutor) -> None:
        """Stop the cycle (its child within the grace), wait at most the stop bound."""
        self._cycle_stop.set()
        job = self._job
        if job is not None:
            self._notifier.status(f"stopping: waiting for the {self._job_kind} to end")
            try:
                job.result(timeout=self._times.stop_bound_s)
            except DispatchloopError as exc:
                log.warning("the %s ended with %s while stopping", self._job_kind, exc)
            except TimeoutError:
                log.error(
                    "the %s did not end within %.0f s", self._job_kind, self._times.stop_bound_s
                )
        executor.shutdown(wait=False, cancel_futures=True)
        self._elector.resign()
        self._metrics.set_leader(False, None)


def _canary_detail(view: CanaryCheck | None) -> dict[str, Any] | None:
    """/readyz: the canary as last looked at (None: not looked at yet)."""
    if view is None:
        return None
    state, result = view.state, view.result
    return {
        "running": state is not None and view.action in ("continue", "fenced"),
        "last_action": view.action,
        "champion": None if state is None else state.champion,
        "challenger": None if state is None else state.challenger,
        "share": None if state is None else state.share,
        "started_at": None if state is None else state.started_at.isoformat(),
        "verdict": None if result is None else result.verdict,
        "reasons": [] if result is None else list(result.reasons),
    }
