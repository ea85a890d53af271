"""The real `dispatchloop run` process: readiness, cycles end to end, SIGTERM mid-training.

Broker (tansu), a simulated dispatch system producing events, the daemon on SQLite
and on PostgreSQL. The judge/registry are the in-memory ones of loop_support,
plugged in through run_daemon's parts factory exactly as the real ones will be.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import (
    create_topic,
    http_get,
    log_lines,
    metrics_port,
    read_topic_all,
    stop,
    wait_until,
)
from kafka import KafkaProducer
from loop_support import N_EVENTS
from prometheus_client.parser import text_string_to_metric_families

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.registry import open_registry
from dispatchloop.replay import open_store
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).parent


class NotifySocket:
    """A stand-in for systemd's NOTIFY_SOCKET: records every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self._sock.recv(4096).decode())
            except TimeoutError:
                continue

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in list(self.messages) for line in m.split("\n"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def produce(bootstrap: str, topic: str, n_events: int, seed: int = 11) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    docs = simulated_events(
        Scenario.default(),
        RewardSettings(),
        LoggingPolicy(GreedyPolicy(), "greedy"),
        n_events,
        seed=seed,
        epsilon=0.3,
    )
    for doc in docs:
        producer.send(topic, json.dumps(doc).encode())
    producer.flush(timeout=60)
    producer.close(timeout=10)


def run_env(
    bootstrap: str, topic: str, url: str, data_dir: Path, notify: NotifySocket, **loop: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "NOTIFY_SOCKET": notify.path,
            "DISPATCHLOOP_DATA_DIR": str(data_dir),
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
            "DISPATCHLOOP_LOOP__MIN_EVENTS": str(N_EVENTS),
            "DISPATCHLOOP_LOOP__CHECK_INTERVAL_S": "0.5",
            "DISPATCHLOOP_LOOP__LEADER_CHECK_INTERVAL_S": "1",
            "DISPATCHLOOP_LOOP__PUBLISH_INTERVAL_S": "1",
            "DISPATCHLOOP_LOOP__OFFLINE_STEPS": "50",
            "DISPATCHLOOP_LOOP__SIM_STEPS": "0",
            "DISPATCHLOOP_LOOP__STOP_GRACE_S": "5",
        }
    )
    env.update({f"DISPATCHLOOP_LOOP__{key.upper()}": value for key, value in loop.items()})
    return env


def start_run(env: dict[str, str], log: Path, verdicts: str | None) -> subprocess.Popen[bytes]:
    command = (
        [sys.executable, str(HERE / "run_with_test_parts.py"), verdicts]
        if verdicts
        else [sys.executable, "-m", "dispatchloop.cli", "run"]
    )
    with log.open("ab") as handle:
        return subprocess.Popen(command, env=env, stderr=handle, stdout=subprocess.DEVNULL)


def cycles_of(url: str) -> list:
    store = open_store(url)
    try:
        return CycleStore(engine_of(store)).recent(50)
    finally:
        store.close()


def test_two_cycles_end_to_end(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path, notify: NotifySocket
):
    create_topic(kafka_bootstrap, topic_name, 2)
    produce(kafka_bootstrap, topic_name, N_EVENTS)
    env = run_env(kafka_bootstrap, topic_name, store_url, tmp_path / "data", notify, interval_s="3")
    log = tmp_path / "run.log"
    process = start_run(env, log, "promote,reject")
    try:
        port = metrics_port(log, timeout_s=60)
        wait_until(lambda: notify.has("READY=1"), 60, "READY=1")
        wait_until(
            lambda: len([c for c in cycles_of(store_url) if c.outcome != "running"]) >= 2,
            120,
            "two cycles",
        )
        finished = [c for c in cycles_of(store_url) if c.outcome != "running"][::-1]
        assert [(c.outcome, c.version) for c in finished[:2]] == [
            ("promoted", "v1"),
            ("rejected", "v2"),
        ]
        assert finished[0].trigger == "interval" and set(finished[0].timings) >= {
            "fit",
            "train",
            "judge",
            "register",
            "promote",
            "publish",
        }
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "/readyz 200")
        started = time.perf_counter()
        _, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert time.perf_counter() - started < 0.5
        ready = json.loads(body)
        assert ready["loop"]["leader"] and ready["loop"]["last_cycle"]["outcome"] in (
            "promoted",
            "rejected",
            "running",
        )
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        text = metrics.decode()
        assert 'dispatchloop_cycles_total{outcome="promoted",trigger="interval"} 1.0' in text
        assert 'dispatchloop_champion_info{version="v1"} 1.0' in text
        assert "dispatchloop_events_stored_total" in text  # one registry: ingest and loop
        models = read_topic_all(kafka_bootstrap, f"{topic_name}.models")
        assert [json.loads(r.value)["model_version"] for r in models] == ["v1"]
        assert notify.has("WATCHDOG=1") and notify.has("STATUS=cycle ")
        assert stop(process, timeout_s=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert notify.has("STOPPING=1")
    store = open_store(store_url)
    try:
        assert store.count_events() == N_EVENTS
    finally:
        store.close()


def test_sigterm_during_training_exits_0_within_the_bound(
    kafka_bootstrap: str, topic_name: str, sqlite_url: str, tmp_path: Path, notify: NotifySocket
):
    create_topic(kafka_bootstrap, topic_name, 1)
    produce(kafka_bootstrap, topic_name, N_EVENTS)
    data = tmp_path / "data"
    env = run_env(kafka_bootstrap, topic_name, sqlite_url, data, notify, sim_steps="5000000")
    log = tmp_path / "run.log"
    process = start_run(env, log, "promote")
    try:
        wait_until(lambda: notify.has("STATUS=train.sim"), 120, "training under way")
        started = time.monotonic()
        code = stop(process, timeout_s=60)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert code == 0, log.read_text()[-2000:]
    assert took < 5 + 10, f"stop took {took:.1f} s"
    (cycle,) = cycles_of(sqlite_url)
    assert cycle.outcome == "aborted" and cycle.stage == "train"
    candidates = data / "candidates"
    assert not candidates.exists() or list(candidates.iterdir()) == []
    assert any(line["msg"].startswith("received SIGTERM") for line in log_lines(log))


def test_the_shipped_run_trains_judges_registers_promotes_and_publishes_for_real(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path, notify: NotifySocket
):
    """`dispatchloop run` with the real gate, registry and outbox: every cycle registers its
    candidate with the gate's decision record; a promotion moves the champion and its
    event reaches dispatch.models; /readyz and /metrics say so."""
    create_topic(kafka_bootstrap, topic_name, 1)
    produce(kafka_bootstrap, topic_name, N_EVENTS)
    env = run_env(
        kafka_bootstrap,
        topic_name,
        store_url,
        tmp_path / "data",
        notify,
        interval_s="2",
        offline_steps="500",
        sim_steps="8000",
    )
    env["DISPATCHLOOP_GATE__OPE_BOOTSTRAP"] = "300"
    env["DISPATCHLOOP_SHADOW__INTERVAL_S"] = "1"
    log = tmp_path / "run.log"
    process = start_run(env, log, None)
    try:
        port = metrics_port(log, timeout_s=60)
        wait_until(lambda: notify.has("READY=1"), 60, "READY=1")
        wait_until(
            lambda: len([c for c in cycles_of(store_url) if c.outcome != "running"]) >= 2,
            420,
            "two real cycles",
        )
        finished = [c for c in cycles_of(store_url) if c.outcome != "running"][::-1][:2]
        assert [c.version for c in finished] == ["v1", "v2"], [c.reasons for c in finished]
        assert all(c.outcome in ("promoted", "rejected", "insufficient_evidence") for c in finished)
        _, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert json.loads(body)["loop"]["cycles_enabled"] is True
        registry = open_registry(store_url, tmp_path / "data" / "registry")
        try:
            for cycle in finished:  # registered whatever the verdict, with the gate's record
                records = registry.decisions(cycle.version)
                assert records and records[-1].candidate == cycle.version
                registry.verify(cycle.version)
            promoted = [c.version for c in finished if c.outcome == "promoted"]
            champion = registry.alias("champion")
            assert promoted, f"no promotion in two cycles: {[c.reasons for c in finished]}"
            assert champion is not None and champion.version == promoted[-1]
        finally:
            registry.close()
        wait_until(
            lambda: len(read_topic_all(kafka_bootstrap, f"{topic_name}.models")) >= len(promoted),
            30,
            "promotion events on dispatch.models",
        )
        events = [
            json.loads(r.value) for r in read_topic_all(kafka_bootstrap, f"{topic_name}.models")
        ]
        assert [e["model_version"] for e in events] == promoted
        assert all(e["decision"]["verdict"] == "promote" for e in events)
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert f'dispatchloop_champion_info{{version="{promoted[-1]}"}} 1.0' in metrics.decode()
        wait_until(lambda: _shadow_of(port, promoted[-1]) is not None, 30, "shadow figures of it")
        shadow = _shadow_of(port, promoted[-1]) or {}
        assert shadow["dispatchloop_shadow_events_scored_total"] >= N_EVENTS
        assert 0.0 <= shadow["dispatchloop_shadow_agreement"] <= 1.0
        assert shadow["dispatchloop_shadow_window_events"] == N_EVENTS  # all stored, < window
        assert stop(process, timeout_s=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _shadow_of(port: int, version: str) -> dict[str, float] | None:
    """The champion's shadow series on /metrics (estimates), once it has scored events."""
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    figures = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name.startswith("dispatchloop_shadow_")
        and sample.labels.get("model_version") == version
        and sample.labels.get("alias") == "champion"
        and sample.labels.get("bound", "estimate") == "estimate"
    }
    return figures if figures.get("dispatchloop_shadow_window_events") else None


def test_run_with_an_unreachable_store_exits_2_in_one_sentence(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env["DISPATCHLOOP_STORE_URL"] = "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"
    result = subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "hunter2" not in result.stderr
    assert "DISPATCHLOOP_STORE_URL" in result.stderr


def _leads(port: int) -> bool | None:
    try:
        _, body = http_get(f"http://127.0.0.1:{port}/readyz", timeout_s=2)
    except OSError:
        return None
    return bool(json.loads(body)["loop"]["leader"])


def test_two_instances_one_leader_takeover_after_sigkill_and_each_event_stored_once(
    kafka_bootstrap: str, topic_name: str, pg_url: str, tmp_path: Path, notify: NotifySocket
):
    create_topic(kafka_bootstrap, topic_name, 2)
    env = run_env(kafka_bootstrap, topic_name, pg_url, tmp_path / "data", notify)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [start_run(env, log, None) for log in logs]
    try:
        ports = [metrics_port(log, timeout_s=60) for log in logs]
        wait_until(lambda: sorted(map(_leads, ports)) == [False, True], 60, "one leader")
        time.sleep(3.0)
        assert sorted(map(_leads, ports)) == [False, True], "still exactly one leader"
        produce(kafka_bootstrap, topic_name, N_EVENTS, seed=21)
        leader = [_leads(port) for port in ports].index(True)
        follower = 1 - leader
        processes[leader].kill()
        processes[leader].wait(timeout=10)
        killed_at = time.monotonic()
        wait_until(lambda: _leads(ports[follower]) is True, 30, "the takeover")
        assert time.monotonic() - killed_at < 30
        produce(kafka_bootstrap, topic_name, N_EVENTS, seed=22)

        def stored() -> int:
            store = open_store(pg_url)
            try:
                return store.count_events()
            finally:
                store.close()

        wait_until(lambda: stored() == 2 * N_EVENTS, 90, "every event stored")
        time.sleep(2.0)
        assert stored() == 2 * N_EVENTS, "each event stored once"
        assert stop(processes[follower], timeout_s=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_kill_9_during_training_then_restart_aborts_the_cycle_and_the_next_completes(
    kafka_bootstrap: str, topic_name: str, sqlite_url: str, tmp_path: Path, notify: NotifySocket
):
    create_topic(kafka_bootstrap, topic_name, 1)
    produce(kafka_bootstrap, topic_name, N_EVENTS)
    data = tmp_path / "data"
    log = tmp_path / "run.log"
    slow = run_env(kafka_bootstrap, topic_name, sqlite_url, data, notify, sim_steps="5000000")
    process = start_run(slow, log, "promote")
    try:
        wait_until(lambda: notify.has("STATUS=train.sim"), 120, "training under way")
        children = _children(process.pid)
        assert children, "training runs in a child process"
        process.kill()
        process.wait(timeout=10)
        wait_until(lambda: not any(map(_alive, children)), 30, "the orphaned child to stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    (killed,) = cycles_of(sqlite_url)
    assert (killed.outcome, killed.stage) == ("running", "train")
    fast = run_env(kafka_bootstrap, topic_name, sqlite_url, data, notify)
    process = start_run(fast, log, "promote")
    try:
        wait_until(
            lambda: any(c.outcome == "promoted" for c in cycles_of(sqlite_url)), 120, "next cycle"
        )
        assert stop(process, timeout_s=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    old = next(c for c in cycles_of(sqlite_url) if c.id == killed.id)
    assert old.outcome == "aborted" and "during stage train" in old.reasons[0]
    from dispatchloop.rl.artifacts import load_model

    candidates = sorted((data / "candidates").iterdir())
    assert not [p for p in candidates if p.name.startswith(".")], "no staging left"
    for directory in candidates:
        load_model(directory)  # every directory left is complete and verified
