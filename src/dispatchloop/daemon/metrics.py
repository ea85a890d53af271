"""Prometheus metrics of the loop (cycles, stages, models, drift, leadership).

Registered on the one CollectorRegistry of the `run` process (the ingest
loop's metrics share it). Label values known up front are created at start so
dashboards and alerts see zeros rather than gaps.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from dispatchloop.daemon.cycles import OUTCOMES, TRIGGERS
from dispatchloop.daemon.triggers import DRIFT_FEATURES
from dispatchloop.evaluation.canary import FIGURES, CanaryResult

STAGES = ("fit", "tune", "train", "judge", "register", "promote", "publish")
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1_200, 1_800, 3_600, 7_200)
ERROR_KINDS = ("input", "transient", "fatal")
CANARY_VERDICTS = ("promote", "rollback", "continue", "insufficient_evidence")


class LoopMetrics:
    """Every figure the scheduler and the cycle runner move."""

    def __init__(self, registry: CollectorRegistry, instance_id: str) -> None:
        self.cycles = Counter(
            "dispatchloop_cycles",
            "Finished cycles by trigger and outcome.",
            ["trigger", "outcome"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "dispatchloop_cycle_stage_seconds",
            "Duration of each cycle stage.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.last_cycle_success = Gauge(
            "dispatchloop_last_successful_cycle_timestamp_seconds",
            "When a cycle last ran to a verdict (promoted, rejected or insufficient evidence); "
            "read from the shared cycle table, so every instance reports it.",
            registry=registry,
        )
        self.last_promotion = Gauge(
            "dispatchloop_last_promotion_timestamp_seconds",
            "When a cycle last promoted a champion (0: never), from the shared cycle table.",
            registry=registry,
        )
        self.champion = Info(
            "dispatchloop_champion", "The version the champion alias points at.", registry=registry
        )
        self.gate_outcomes = Counter(
            "dispatchloop_gate_outcomes",
            "Gate results of judged candidates (passed: true, false or undecided).",
            ["gate", "passed"],
            registry=registry,
        )
        self.candidate_delta = Gauge(
            "dispatchloop_candidate_vs_champion",
            "The last candidate's gate statistics (candidate minus champion), by gate.",
            ["gate"],
            registry=registry,
        )
        self.drift = Gauge(
            "dispatchloop_drift_psi",
            "PSI between the last training window and the recent window, by feature.",
            ["feature"],
            registry=registry,
        )
        self.final_loss = Gauge(
            "dispatchloop_train_final_loss",
            "Training loss at the end of the last training.",
            registry=registry,
        )
        self.tune_best = Gauge(
            "dispatchloop_tune_best_value",
            "Best mean validation return of the tuning study.",
            registry=registry,
        )
        self.child_failures = Counter(
            "dispatchloop_child_failures",
            "Training or tuning children that failed, timed out, crashed or were stopped.",
            ["stage", "kind"],
            registry=registry,
        )
        self.errors = Counter(
            "dispatchloop_loop_errors",
            "Errors the scheduler handled, by errors.py class.",
            ["kind"],
            registry=registry,
        )
        self.leader = Gauge(
            "dispatchloop_leader",
            "1 while this instance leads (runs cycles and the outbox publisher).",
            ["instance_id"],
            registry=registry,
        )
        self.leader_epoch = Gauge(
            "dispatchloop_leader_epoch",
            "The leadership term this instance leads in (0: follower).",
            registry=registry,
        )
        self._canary_metrics(registry)
        self._instance = instance_id
        self._prime()

    def _canary_metrics(self, registry: CollectorRegistry) -> None:
        self.canary_active = Gauge(
            "dispatchloop_canary_active",
            "1 while a challenger serves a canary share (as last looked at by the leader).",
            registry=registry,
        )
        self.canary_share = Gauge(
            "dispatchloop_canary_share",
            "The running canary's share of decisions (0: none).",
            registry=registry,
        )
        self.canary_decisions = Gauge(
            "dispatchloop_canary_decisions",
            "Decisions with a stored outcome since the canary started, by arm.",
            ["arm"],
            registry=registry,
        )
        self.canary_difference = Gauge(
            "dispatchloop_canary_difference",
            "Challenger minus champion at the last look, by figure (reward, late_rate, "
            "cancel_rate) and bound (estimate, low, high of the anytime-valid interval).",
            ["figure", "bound"],
            registry=registry,
        )
        self.canary_verdicts = Counter(
            "dispatchloop_canary_verdicts",
            "Canary looks by verdict (promote, rollback, continue, insufficient_evidence).",
            ["verdict"],
            registry=registry,
        )

    def observe_canary(self, result: CanaryResult) -> None:
        """One look's figures (infinite bounds of an empty arm are not exported)."""
        self.canary_decisions.labels("champion").set(result.n_champion)
        self.canary_decisions.labels("challenger").set(result.n_challenger)
        for figure in FIGURES:
            difference = getattr(result, figure)
            values = (difference.estimate, difference.ci.low, difference.ci.high)
            for bound, value in zip(("estimate", "low", "high"), values, strict=True):
                if math.isfinite(value):
                    self.canary_difference.labels(figure, bound).set(value)
        self.canary_verdicts.labels(result.verdict).inc()

    def _prime(self) -> None:
        for trigger in TRIGGERS:
            for outcome in OUTCOMES:
                if outcome != "running":
                    self.cycles.labels(trigger, outcome)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for feature in DRIFT_FEATURES:
            self.drift.labels(feature)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        for verdict in CANARY_VERDICTS:
            self.canary_verdicts.labels(verdict)
        for arm in ("champion", "challenger"):
            self.canary_decisions.labels(arm)
        for stage in ("train", "tune"):
            for kind in ("failed", "timeout", "crashed", "stopped"):
                self.child_failures.labels(stage, kind)
        self.leader.labels(self._instance).set(0)
        self.champion.info({"version": ""})

    def set_leader(self, leading: bool, epoch: int | None) -> None:
        self.leader.labels(self._instance).set(1 if leading else 0)
        self.leader_epoch.set(epoch or 0)
