"""Prometheus metrics of serving, on an injected collector registry.

Why injected: the library must not change process-wide state (a dispatch system
embedding it has its own metrics); `serve` exposes this registry on `/metrics`.
Every error path counts itself here, so an operator can alert on each.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DECISION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.1,
)
"""Seconds; dense around the 2 ms p99 target of a decision."""

FOLLOWER_ERROR_KINDS = ("broker", "invalid_event", "registry")


class ServingMetrics:
    """Decisions per version, decision latency, invalid requests, model loads and failures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.collector_registry = registry
        self.decisions = Counter(
            "dispatchloop_serving_decisions",
            "Decisions served, by the model version that made them and its policy label.",
            ["model_version", "policy"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "dispatchloop_serving_decision_seconds",
            "Time to validate, featurize, score and choose one decision (server side).",
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.invalid_requests = Counter(
            "dispatchloop_serving_invalid_requests",
            "Decision requests refused with 422 (invalid JSON or a field breaking the contract).",
            registry=registry,
        )
        self.model_loads = Counter(
            "dispatchloop_serving_model_loads",
            "Versions verified, loaded and swapped in, by scope and alias.",
            ["scope", "alias"],
            registry=registry,
        )
        self.load_failures = Counter(
            "dispatchloop_serving_model_load_failures",
            "Versions refused (the old model kept serving), by reason.",
            ["reason"],
            registry=registry,
        )
        self.follower_errors = Counter(
            "dispatchloop_serving_follower_errors",
            "Problems following dispatch.models: broker, invalid_event, registry.",
            ["kind"],
            registry=registry,
        )
        self.model_info = Gauge(
            "dispatchloop_serving_model_info",
            "1 for the version each scope's alias is served by.",
            ["scope", "alias", "version"],
            registry=registry,
        )
        self.last_swap = Gauge(
            "dispatchloop_serving_last_swap_timestamp_seconds",
            "When the routing of any scope last changed.",
            registry=registry,
        )
        for kind in FOLLOWER_ERROR_KINDS:
            self.follower_errors.labels(kind)
        self._per_version: dict[tuple[str, str], Counter] = {}

    def decided(self, model_version: str | None, policy: str, seconds: float) -> None:
        """Count one decision and its latency (children cached: this is the hot path)."""
        key = (model_version or "none", policy)
        child = self._per_version.get(key)
        if child is None:
            child = self.decisions.labels(*key)
            self._per_version[key] = child
        child.inc()
        self.decision_seconds.observe(seconds)
