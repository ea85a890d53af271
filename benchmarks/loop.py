"""The `run` loop: data-to-promoted-model latency per stage, and responsiveness while training.

One local tansu broker, a SQLite store in a temporary directory, the real
`run_daemon` in a child process (same code as `dispatchloop run`) with:
  - the default [loop] settings (trainer dqn, 2,000 offline + 12,000 simulator
    steps, min_events 3,000) except the trigger check period;
  - the shipped parts (`daemon.parts.registry_parts`: the gate in a child, the SQL
    registry, the outbox relay) by default; `--stand-in` for the earlier judge that
    promotes everything with an in-memory registry (no gate time).

(a) latency: the daemon runs idle on an empty topic; 3,000 events (the default
    minimum) are produced; clock from the first event produced to the cycle's start
    (ingest + trigger), its stages from the cycle row, and the promotion event read
    back from the models topic. The real gate may not promote the first candidate:
    then (a) reports the outcome and the time to the decision instead.
(b) responsiveness: the ingest rate of a 200,000-event backlog waiting in the
    topic when the daemon starts, (i) with no cycle (a daemon without parts) and
    (ii) while a cycle trains (the store already holds 3,000 events, so a cycle
    starts at once; 5,000,000 simulator steps outlast the backlog); then /readyz
    latency (p50 / p99 / max over 200 requests) in the same two states.

    PYTHONPATH=src .venv/bin/python benchmarks/loop.py [--backlog 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.daemon.parts import registry_parts
from dispatchloop.daemon.run import LoopParts, run_daemon
from dispatchloop.events import DecisionRecord, DispatchOutcomeEvent, GateResult, ScenarioRef
from dispatchloop.logs import configure_logging
from dispatchloop.replay import open_store
from dispatchloop.replay.base import IncomingEvent, ReplayStore
from dispatchloop.settings import RewardSettings, Settings, load_settings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.broker import start_broker
from dispatchloop.testing.events import encode, event_stream

HERE = Path(__file__).resolve()


# --- the daemon side (child process) --------------------------------------------------


@dataclass
class _Registry:
    versions: list[str] = field(default_factory=list)
    alias: str | None = None
    outbox: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def champion(self) -> str | None:
        return self.alias

    def register(self, model_dir: Path, record: DecisionRecord) -> str:
        with self.lock:
            self.versions.append(f"v{len(self.versions) + 1}")
            return self.versions[-1]

    def promote(self, version: str, record: DecisionRecord, expected_previous: str | None) -> None:
        with self.lock:
            self.alias = version
            self.outbox.append(version)


@dataclass
class _Publisher:
    settings: Settings
    registry: _Registry
    sent: int = 0
    producer: Any = None

    def publish_pending(self) -> int:
        with self.registry.lock:
            pending = self.registry.outbox[self.sent :]
        if not pending:
            return 0
        if self.producer is None:
            self.producer = KafkaProducer(**self.settings.kafka.client_options(), acks="all")
        for version in pending:
            body = {"event_type": "model.promoted", "model_version": version, "at": time.time()}
            self.producer.send(self.settings.kafka.models_topic, json.dumps(body).encode())
        self.producer.flush(timeout=30)
        self.sent += len(pending)
        return len(pending)


def _promote_all(candidate_dir: Path, champion: str | None, fit: Any, stop: Any) -> DecisionRecord:
    return DecisionRecord(
        record_id=uuid.uuid4().hex,
        candidate=candidate_dir.name,
        champion=champion,
        verdict="promote",
        gates=(GateResult(name="benchmark", passed=True, detail="promotes everything"),),
        reasons=("benchmark judge",),
        scenario=ScenarioRef(fingerprint=fit.fingerprint),
        created_at=datetime.now(UTC),
    )


def daemon_main(with_parts: bool, stand_in: bool) -> None:
    settings = load_settings()
    configure_logging(settings)

    def parts(
        settings: Settings, store: ReplayStore, metrics: CollectorRegistry
    ) -> LoopParts | None:
        if not with_parts:
            return None
        if not stand_in:
            return registry_parts(settings, store, metrics)
        registry = _Registry()
        return LoopParts(_promote_all, registry, _Publisher(settings, registry))

    sys.exit(run_daemon(settings, parts))


# --- the measuring side ---------------------------------------------------------------


def _env(bootstrap: str, topic: str, url: str, data: Path, **loop: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env.update(
        {
            "DISPATCHLOOP_DATA_DIR": str(data),
            "DISPATCHLOOP_STORE_URL": url,
            "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "DISPATCHLOOP_KAFKA__TOPIC": topic,
            "DISPATCHLOOP_KAFKA__DLQ_TOPIC": f"{topic}.dlq",
            "DISPATCHLOOP_KAFKA__MODELS_TOPIC": f"{topic}.models",
            "DISPATCHLOOP_KAFKA__GROUP_ID": f"g-{topic}",
            "DISPATCHLOOP_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "DISPATCHLOOP_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "DISPATCHLOOP_METRICS__PORT": "0",
            "DISPATCHLOOP_LOG_FORMAT": "json",
            "DISPATCHLOOP_LOOP__CHECK_INTERVAL_S": "1",
        }
    )
    env.update({f"DISPATCHLOOP_LOOP__{k.upper()}": v for k, v in loop.items()})
    return env


class Daemon:
    def __init__(
        self, env: dict[str, str], log: Path, with_parts: bool, stand_in: bool = False
    ) -> None:
        self.log = log
        command = [sys.executable, str(HERE), "daemon", "--parts" if with_parts else "--no-parts"]
        with log.open("ab") as handle:
            self.process = subprocess.Popen(
                command + (["--stand-in"] if stand_in else []),
                env=env,
                stderr=handle,
                stdout=subprocess.DEVNULL,
            )
        self.port = self._port()

    def _port(self) -> int:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if '"metrics_port"' in line:
                    return int(json.loads(line)["metrics_port"])
            time.sleep(0.1)
        raise TimeoutError("the daemon never logged its metrics port")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), bytes(r.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def stored(self) -> float:
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith("dispatchloop_events_stored_total "):
                return float(line.split()[1])
        return 0.0

    def wait_joined(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            detail = json.loads(self.get("/readyz")[1])
            if detail["ingest"]["consumer_joined"]:
                return
            time.sleep(0.2)
        raise TimeoutError("the consumer never joined")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()


def _produce_sim(bootstrap: str, topic: str, n: int, seed: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    docs = simulated_events(
        Scenario.default(),
        RewardSettings(),
        LoggingPolicy(GreedyPolicy(), "greedy"),
        n,
        seed=seed,
        epsilon=0.2,
    )
    for doc in docs:
        producer.send(topic, json.dumps(doc).encode())
    producer.flush(timeout=120)
    producer.close(timeout=10)


def _produce_backlog(bootstrap: str, topic: str, n: int, seed: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=262_144)
    for event in event_stream(seed, n):
        producer.send(topic, encode(event))
    producer.flush(timeout=300)
    producer.close(timeout=10)


def _first_model_event(bootstrap: str, topic: str, timeout_s: float) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        for _record in consumer:
            return time.monotonic()
    finally:
        consumer.close()
    raise TimeoutError("no promotion event")


def _first_cycle(url: str) -> Any:
    store = open_store(url)
    try:
        cycles = CycleStore(engine_of(store)).recent(5)
    finally:
        store.close()
    return cycles[-1] if cycles else None


def _decided(url: str, timeout_s: float) -> tuple[float, Any]:
    """When the first cycle finished (monotonic clock), and the cycle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            cycle = _first_cycle(url)
        except Exception:
            cycle = None
        if cycle is not None and cycle.outcome != "running":
            return time.monotonic(), cycle
        time.sleep(0.5)
    raise TimeoutError("no cycle finished")


def latency(bootstrap: str, work: Path, stand_in: bool) -> dict[str, Any]:
    topic = f"bench.loop.{uuid.uuid4().hex[:8]}"
    _topic(bootstrap, topic)
    url = f"sqlite:///{work / 'latency.db'}"
    env = _env(bootstrap, topic, url, work / "data-a")
    daemon = Daemon(env, work / "a.log", True, stand_in)
    try:
        daemon.wait_joined()
        started, wall = time.monotonic(), time.time()
        _produce_sim(bootstrap, topic, 3_000, seed=3)
        produced = time.monotonic() - started
        decided_at, cycle = _decided(url, timeout_s=900)
        promoted_at = (
            _first_model_event(bootstrap, f"{topic}.models", timeout_s=120)
            if cycle.outcome == "promoted"
            else None
        )
    finally:
        daemon.stop()
    return {
        "produce_s": produced,
        "trigger_s": cycle.started_at.timestamp() - wall,
        "decided_s": decided_at - started,
        "total_s": None if promoted_at is None else promoted_at - started,
        "cycle": cycle,
    }


def _readyz(daemon: Daemon, n: int = 200) -> tuple[float, float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        daemon.get("/readyz")
        times.append((time.perf_counter() - t) * 1000)
        time.sleep(0.01)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), max(times)


def _preload(url: str, n: int) -> None:
    """Enough stored events for a cycle to start at the daemon's first check."""
    store = open_store(url)
    try:
        batch = []
        for doc in simulated_events(
            Scenario.default(),
            RewardSettings(),
            LoggingPolicy(GreedyPolicy(), "greedy"),
            n,
            seed=4,
            epsilon=0.2,
        ):
            raw = json.dumps(doc).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
    finally:
        store.close()


def _ingest_rate(daemon: Daemon, base: float, backlog: int) -> tuple[float, float]:
    """Events/s from 10 % to 90 % of the backlog, and the share of samples with a cycle running."""
    low, high = base + 0.1 * backlog, base + 0.9 * backlog
    t_low = t_high = None
    running, samples = 0, 0
    deadline = time.monotonic() + 900
    while t_high is None and time.monotonic() < deadline:
        stored = daemon.stored()
        now = time.monotonic()
        if t_low is None and stored >= low:
            t_low = now
        if stored >= high:
            t_high = now
        if t_low is not None:
            samples += 1
            running += b'"cycle_running": true' in daemon.get("/readyz")[1]
        time.sleep(0.05)
    if t_low is None or t_high is None or t_high <= t_low:
        raise TimeoutError("the backlog was not ingested in a measurable way")
    return 0.8 * backlog / (t_high - t_low), running / max(samples, 1)


def responsiveness(bootstrap: str, work: Path, backlog: int) -> dict[str, Any]:
    """The backlog is in the topic before the daemon starts; with parts, a cycle starts at
    once (the store already holds 3,000 events) and trains for far longer than the backlog
    takes to ingest."""
    results: dict[str, Any] = {}
    for mode in ("idle", "training"):
        topic = f"bench.resp.{mode}.{uuid.uuid4().hex[:8]}"
        _topic(bootstrap, topic)
        url = f"sqlite:///{work / f'{mode}.db'}"
        _preload(url, 3_000)
        _produce_backlog(bootstrap, topic, backlog, seed=17)
        env = _env(bootstrap, topic, url, work / f"data-{mode}", sim_steps="5000000")
        daemon = Daemon(env, work / f"{mode}.log", with_parts=mode == "training")
        try:
            rate, share = _ingest_rate(daemon, 0.0, backlog)
            results[f"rate_{mode}"], results[f"running_{mode}"] = rate, share
            results[f"readyz_{mode}"] = _readyz(daemon)
        finally:
            daemon.stop()
    return results


def _print_latency(result: dict[str, Any]) -> None:
    cycle = result["cycle"]
    print("\n| (a) data → promoted model, default [loop] settings | seconds |")
    print("|---|---|")
    print(f"| produce 3,000 events (first → last acknowledged) | {result['produce_s']:.1f} |")
    print(
        f"| first event produced → cycle started (ingest + trigger) | {result['trigger_s']:.1f} |"
    )
    for stage, seconds in cycle.timings.items():
        print(f"| stage {stage} | {seconds:.1f} |")
    print(
        f"| first event produced → cycle finished (seen by polling) | {result['decided_s']:.1f} |"
    )
    total = result["total_s"]
    shown = "—" if total is None else f"{total:.1f}"
    print(f"| first event produced → promotion event read back | {shown} |")
    print(f"\ncycle {cycle.id}: trigger {cycle.trigger}, outcome {cycle.outcome}")
    for reason in cycle.reasons:
        print(f"  - {reason}")


def _print_responsiveness(resp: dict[str, Any], backlog: int) -> None:
    print("\n| (b) responsiveness | idle | while training |")
    print("|---|---|---|")
    for name, key in (("/readyz p50 / p99 / max (ms)", "readyz"),):
        idle, busy = resp[f"{key}_idle"], resp[f"{key}_training"]
        print(
            f"| {name} | {idle[0]:.1f} / {idle[1]:.1f} / {idle[2]:.1f} | "
            f"{busy[0]:.1f} / {busy[1]:.1f} / {busy[2]:.1f} |"
        )
    ratio = resp["rate_training"] / resp["rate_idle"]
    share = resp["running_training"]
    print(
        f"| ingest rate, {backlog:,}-event backlog (events/s) | {resp['rate_idle']:,.0f} | "
        f"{resp['rate_training']:,.0f} ({ratio:.0%} of idle) |"
    )
    print(f"\n(b)(ii): a cycle was running in {share:.0%} of the samples taken while ingesting")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "daemon"])
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--no-parts", action="store_true")
    parser.add_argument(
        "--stand-in", action="store_true", help="A judge that promotes everything (no gate)."
    )
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--skip-latency", action="store_true", help="Only (b).")
    parser.add_argument("--skip-responsiveness", action="store_true", help="Only (a).")
    args = parser.parse_args()
    if args.mode == "daemon":
        daemon_main(args.parts, args.stand_in)
        return
    broker = start_broker()
    work = Path(tempfile.mkdtemp(prefix="dispatchloop-bench-loop-"))
    try:
        load = os.getloadavg()
        result = None if args.skip_latency else latency(broker.bootstrap, work, args.stand_in)
        if result is not None:
            print(f"(a) {result['total_s']} s, stages {result['cycle'].timings}", flush=True)
        resp = (
            None
            if args.skip_responsiveness
            else responsiveness(broker.bootstrap, work, args.backlog)
        )
        after = os.getloadavg()
    finally:
        broker.stop()
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}); load before "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, after {after[0]:.2f} / "
        f"{after[1]:.2f} / {after[2]:.2f}"
    )
    if result is not None:
        _print_latency(result)
    if resp is not None:
        _print_responsiveness(resp, args.backlog)


if __name__ == "__main__":
    main()
