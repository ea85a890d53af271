"""Prometheus metrics of the registry and its outbox publisher, on an injected registry.

Why injected: the daemon serves them on its /metrics; tests and the CLI use a
private CollectorRegistry so counters never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ERROR_KINDS = ("integrity", "stray_file", "conflict", "database")
PUBLISH_FAILURE_KINDS = ("broker", "timeout", "invalid")


class RegistryMetrics:
    """Champion info, promotion time, promotions/rollbacks, outbox backlog, failures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.collector_registry = registry
        self.champion_info = Gauge(
            "dispatchloop_registry_champion_info",
            "1 for the version the champion alias of a scope points to.",
            ["scope", "version"],
            registry=registry,
        )
        self.last_promotion = Gauge(
            "dispatchloop_registry_last_promotion_timestamp_seconds",
            "When an alias last moved, by scope and alias.",
            ["scope", "alias"],
            registry=registry,
        )
        self.promotions = Counter(
            "dispatchloop_registry_promotions",
            "Alias moves by promotion (and canary share changes), by alias and actor.",
            ["alias", "actor"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "dispatchloop_registry_rollbacks",
            "Alias rollbacks, by alias and actor.",
            ["alias", "actor"],
            registry=registry,
        )
        self.outbox_backlog = Gauge(
            "dispatchloop_registry_outbox_backlog",
            "Promotion events written but not yet acknowledged by the broker.",
            registry=registry,
        )
        self.published = Counter(
            "dispatchloop_registry_events_published",
            "Promotion events acknowledged by the broker (redeliveries included).",
            registry=registry,
        )
        self.publish_failures = Counter(
            "dispatchloop_registry_publish_failures",
            "Failed publication attempts of outbox events, by kind.",
            ["kind"],
            registry=registry,
        )
        self.errors = Counter(
            "dispatchloop_registry_errors",
            "Registry operations refused or failed, by kind.",
            ["kind"],
            registry=registry,
        )
        for kind in PUBLISH_FAILURE_KINDS:
            self.publish_failures.labels(kind)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)

    def moved(self, scope: str, alias: str, version: str, previous: str | None) -> None:
        """Keep the champion info gauge on exactly one version per scope."""
        if alias != "champion":
            return
        if previous is not None and previous != version:
            self.champion_info.labels(scope, previous).set(0)
        self.champion_info.labels(scope, version).set(1)
