"""Registry benchmark: promotion latency (alias move committed → event acknowledged by
the broker) and register time for a default-size model.

    .venv/bin/python benchmarks/registry.py [--promotions 200] [--registers 10] [--pg]

Starts a local tansu broker (or uses DISPATCHLOOP_TEST_KAFKA_BOOTSTRAP) and a fresh
SQLite registry (PostgreSQL too with --pg). Promotions alternate between two
versions with `force` (no gate); each latency runs from the moment `promote`
returned (its transaction committed) to the moment `drain_once` returned (the
broker acknowledged with acks=all and the row was marked published), with one
warm producer as the daemon keeps it. "Cold" repeats it with a new producer per
promotion, as one `dispatchloop models promote` process does. Register time is
`register()` of a freshly saved default-size model (DQNConfig() network + ONNX):
verify, copy, fsync, re-hash, rename, commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from dispatchloop.registry import OutboxPublisher, SqlRegistry, make_producer, open_registry
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.testing.broker import start_broker
from dispatchloop.testing.postgres import scratch_database

PROMOTE_CALLS: list[float] = []
"""Duration of each `promote()` call: re-hash the version's files, then the transaction."""


def _now() -> datetime:
    return datetime.now(UTC)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def default_model(directory: Path, seed: int) -> Path:
    config = DQNConfig()
    torch.manual_seed(seed)
    network = CandidateQNetwork(config.hidden_size, config.n_layers)
    save_model(directory, network, config, CardDraft(training={"mode": "bench"}))
    return directory


def publisher_for(
    registry: SqlRegistry, factory: Callable[[], object], topic: str
) -> OutboxPublisher:
    return OutboxPublisher(registry, factory, topic, clock=_now, ack_timeout_s=10.0)  # type: ignore[arg-type]


def bench_register(registry: SqlRegistry, workdir: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        model = default_model(workdir / f"reg{i}", seed=1000 + i)
        start = time.perf_counter()
        registry.register(model, actor="bench")
        times.append(time.perf_counter() - start)
    return times


def bench_promotions(
    registry: SqlRegistry, bootstrap: str, versions: list[str], n: int, warm: bool
) -> list[float]:
    topic = f"dispatch.models.bench{uuid.uuid4().hex[:8]}"
    options = {"bootstrap_servers": [bootstrap]}
    shared = make_producer(options, 10.0) if warm else None
    factory = (lambda: shared) if warm else (lambda: make_producer(options, 10.0))
    publisher = publisher_for(registry, factory, topic)
    publisher.drain(5.0)
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        registry.promote(versions[i % 2], actor="bench", reason=f"bench {i}", force=True)
        committed = time.perf_counter()
        PROMOTE_CALLS.append(committed - started)
        result = publisher.drain_once()
        assert result.published == 1 and result.backlog == 0, result
        latencies.append(time.perf_counter() - committed)
        if not warm:
            publisher.close()
    publisher.close()
    return latencies


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1_000 for v in values]
    return (
        f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {percentile(ms, 0.99):.1f} "
        f"| {max(ms):.1f} |"
    )


def run(url: str, label: str, bootstrap: str, args: argparse.Namespace, workdir: Path) -> None:
    registry = open_registry(url, workdir / f"registry-{label}")
    PROMOTE_CALLS.clear()
    try:
        registers = bench_register(registry, workdir / label, args.registers)
        versions = [v.version for v in registry.list_versions()[:2]]
        warm = bench_promotions(registry, bootstrap, versions, args.promotions, warm=True)
        cold = bench_promotions(registry, bootstrap, versions, args.cold, warm=False)
    finally:
        registry.close()
    size = sum(f.stat().st_size for f in (workdir / label / "reg0").iterdir()) / 1024
    print(f"\n{label}: default-size model directory {size:.0f} KiB")
    print("| measure | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    print(summary(f"{label} register (default-size model + ONNX)", registers))
    print(summary(f"{label} promote() call: verify + alias/history/outbox commit", PROMOTE_CALLS))
    print(summary(f"{label} promotion → acknowledged, warm producer", warm))
    print(summary(f"{label} promotion → acknowledged, new producer each", cold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--promotions", type=int, default=200)
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--registers", type=int, default=10)
    parser.add_argument("--pg", action="store_true", help="Also run on PostgreSQL.")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    external = os.environ.get("DISPATCHLOOP_TEST_KAFKA_BOOTSTRAP")
    broker = None if external else start_broker()
    bootstrap = external or (broker.bootstrap if broker else "")
    try:
        with tempfile.TemporaryDirectory(prefix="dl-bench-registry-") as tmp:
            workdir = Path(tmp)
            run(f"sqlite:///{workdir / 'store.db'}", "sqlite", bootstrap, args, workdir)
            if args.pg:
                with scratch_database("dl_bench") as pg_url:
                    run(pg_url, "postgresql", bootstrap, args, workdir)
    finally:
        if broker is not None:
            broker.stop()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
