"""Prometheus metrics of the ingest loop, registered on an injected CollectorRegistry.

Why injected: tests and the daemon run several loops in one process; the global
default registry would make their counters collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ERROR_KINDS = ("store", "dlq", "commit", "broker")


class IngestMetrics:
    """Every counter the ingest loop moves; label values are created up front so they show as 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumed = Counter(
            "dispatchloop_events_consumed",
            "Records read from the events topic (valid and dead letters, redeliveries included).",
            registry=registry,
        )
        self.stored = Counter(
            "dispatchloop_events_stored",
            "Valid events newly written to the replay store.",
            registry=registry,
        )
        self.duplicates = Counter(
            "dispatchloop_events_duplicate",
            "Valid events the store already held (same event_id).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "dispatchloop_dead_letters",
            "Records delivered to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.batch_write_seconds = Histogram(
            "dispatchloop_batch_write_seconds",
            "Time to write one poll's valid events durably to the store.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "dispatchloop_consumer_lag",
            "Records between the consumer position and the end of each assigned partition.",
            ["partition"],
            registry=registry,
        )
        self.store_size_bytes = Gauge(
            "dispatchloop_store_size_bytes",
            "Size of the replay store on disk, where the backend can tell.",
            registry=registry,
        )
        self.store_events = Gauge(
            "dispatchloop_store_events", "Events held by the replay store.", registry=registry
        )
        self.errors = Counter(
            "dispatchloop_ingest_errors",
            "Failures the loop recovered from, by kind (store, dlq, commit, broker).",
            ["kind"],
            registry=registry,
        )
        self.dead_letters_truncated = Counter(
            "dispatchloop_dead_letters_truncated",
            "Dead letters sent as a bounded prefix (the record was too large for the DLQ).",
            registry=registry,
        )
        self.unreachable_seconds = Gauge(
            "dispatchloop_consumer_unreachable_seconds",
            "Seconds since the broker last answered the consumer (records fetched, offsets "
            "read or committed); grows while the consumer cannot fetch.",
            registry=registry,
        )
        self.last_batch_timestamp = Gauge(
            "dispatchloop_last_batch_timestamp_seconds",
            "Unix time of the last committed batch.",
            registry=registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind=kind)
