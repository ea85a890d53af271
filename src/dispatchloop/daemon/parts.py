"""The parts `run` plugs into its loop: the promotion gate, the model registry, its outbox.

Built once per process on the leader's worker side, from settings, with the
process's one metrics registry; the loop (`daemon.scheduler`) sees them only
through `pipeline.protocols`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from dispatchloop.daemon.run import LoopParts
from dispatchloop.daemon.shadow import ShadowMetrics, ShadowScorer
from dispatchloop.evaluation.gate import GateThresholds
from dispatchloop.pipeline.canary import CanaryConfig, RegistryCanary
from dispatchloop.pipeline.child import ChildLimits
from dispatchloop.pipeline.judge import GateJudge
from dispatchloop.pipeline.registrar import OutboxRelay, RegistryRegistrar
from dispatchloop.registry import open_registry
from dispatchloop.registry.base import Checkpoint, no_checkpoint
from dispatchloop.registry.metrics import RegistryMetrics
from dispatchloop.registry.outbox import publisher_from_settings
from dispatchloop.replay.base import ReplayStore
from dispatchloop.replay.engine import open_store
from dispatchloop.settings import Settings


def _now() -> datetime:
    return datetime.now(UTC)


def registry_parts(
    settings: Settings,
    store: ReplayStore,
    metrics: CollectorRegistry,
    *,
    checkpoint: Checkpoint = no_checkpoint,
) -> LoopParts:
    """The real judge (the gate, in a child), registrar, canary and outbox relay of the store's
    database. `store` is the worker thread's (the canary reads its outcome events there).

    `checkpoint` (crash tests only, `registry.base.crash_checkpoint`) is passed to the
    registry, the outbox publisher and the cycle runner's stage boundaries."""
    registry = open_registry(
        settings.resolved_store_url,
        settings.resolved_registry_root,
        clock=_now,
        checkpoint=checkpoint,
        metrics=RegistryMetrics(metrics),
    )
    publisher = publisher_from_settings(
        registry, settings.kafka, settings.registry, clock=_now, checkpoint=checkpoint
    )
    judge = GateJudge(
        registry,
        settings.resolved_store_url,
        settings.reward,
        GateThresholds.from_settings(settings.gate),
        ChildLimits(settings.loop.judge_timeout_s, settings.loop.stop_grace_s),
    )
    shadow = shadow_scorer(settings, metrics) if settings.shadow.enabled else None
    return LoopParts(
        judge,
        RegistryRegistrar(registry),
        OutboxRelay(publisher),
        checkpoint,
        shadow=shadow,
        canary=RegistryCanary(
            registry,
            store,
            settings.reward,
            CanaryConfig.from_settings(settings.loop),
            clock=_now,
            shadow=dict if shadow is None else shadow.record_metrics,
        ),
    )


def shadow_scorer(settings: Settings, metrics: CollectorRegistry) -> ShadowScorer:
    """Live shadow scoring with a store and registry handle of its own (its own thread)."""
    url = settings.resolved_store_url
    store = open_store(url)
    try:
        registry = open_registry(url, settings.resolved_registry_root, clock=_now)
    except BaseException:
        store.close()
        raise
    return ShadowScorer(
        store=store,
        registry=registry,
        settings=settings.shadow,
        reward=settings.reward,
        metrics=ShadowMetrics(metrics),
    )
