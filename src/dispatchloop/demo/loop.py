"""The closed loop on one machine: embedded broker, `dispatchloop run`, `simulate --follow`.

Nothing here re-implements a stage: the daemon (`run`, a child process) ingests,
fits, trains, judges, registers, promotes and publishes; the dispatch system
(`simulate --follow`, a child process) decides every booking through `serving`,
greedy with exploration until the first promotion, then with what `dispatch.models`
promotes. The demo only starts them with embedded settings, watches the store,
cycles table and registry read-only, stops them with SIGTERM and computes the
figures from what was stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dispatchloop.demo.broker import LocalBroker, start_broker
from dispatchloop.demo.monitor import LoopMonitor, Snapshot
from dispatchloop.errors import FatalError, InputError
from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario

DEMO_TOPIC = "dispatch.outcomes"
DEMO_GROUP = "dispatchloop-demo"
COMPANY = "demo"
READY_TIMEOUT_S = 180.0
POLL_S = 2.0
STOP_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0


class DemoInputError(InputError):
    """An unusable demo option (exit code 2)."""


class DemoFailedError(FatalError):
    """A child or the broker did not do what it must (exit code 1); the sentence says which."""


@dataclass(frozen=True)
class DemoOptions:
    """The demo's own knobs; the loop's budgets come from `[loop]` settings (LoopSettings)."""

    cycles: int = 3
    """Stop after this many finished cycles (promoted, rejected, skipped, failed...)."""
    max_minutes: float = 15.0
    """Stop after this long whatever the cycles."""
    seed: int = 0
    """The world (`Scenario.seeded`) and the event stream (`simulate --seed`)."""
    rate: float = 100.0
    """Decisions per second the simulated dispatch system takes (more decisions per minute:
    a narrower interval on live against greedy within the demo's few minutes)."""
    epsilon: float = 0.1
    """Serving's exploration: a uniformly random eligible driver with this chance."""
    new_events: int = 4_000
    """`loop.new_events` of the demo's daemon: a cycle starts every this many new events."""
    trainer: Literal["dqn", "distill"] = "distill"
    """`loop.trainer` of the demo's daemon. distill, because at the loop's default budgets it
    closes ~38 % of the greedy→hindsight gap of the default world in ~60 s of training,
    the DQN ~8 % (BENCHMARKS.md, closed loop): too small to see live in a few minutes."""
    min_events: int | None = None
    """`loop.min_events`; None keeps the setting (a cycle on fewer events is skipped)."""
    check_interval_s: float = 1.0
    """`loop.check_interval_s`: how soon a due trigger starts a cycle."""
    gap_episodes: int = 300
    """Paired simulator episodes measuring greedy's and hindsight's levels in the world."""

    def __post_init__(self) -> None:
        if self.cycles < 1:
            raise DemoInputError(f"--cycles must be at least 1, got {self.cycles}")
        if self.max_minutes <= 0:
            raise DemoInputError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.rate <= 0:
            raise DemoInputError(f"--rate must be positive, got {self.rate}")
        if not 0.0 <= self.epsilon < 1.0:
            raise DemoInputError(f"--epsilon must be within [0, 1), got {self.epsilon}")
        if self.new_events < 1:
            raise DemoInputError(f"--new-events must be positive, got {self.new_events}")


@dataclass
class Children:
    """The two product processes the demo runs, with their exit codes once stopped."""

    run: subprocess.Popen[bytes]
    simulate: subprocess.Popen[bytes] | None = None
    codes: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopRun:
    """What the run left behind, for the figures."""

    workdir: Path
    store_url: str
    registry_root: Path
    world: Scenario
    last: Snapshot
    produced: int | None
    """Events `simulate` reports sent (None if its summary is missing)."""
    exit_codes: Mapping[str, int | None]
    """`run` and `simulate`: 0 is a clean stop on SIGTERM."""
    stopped_because: str


def prepare_workdir(workdir: Path | None) -> Path:
    """A fresh directory (kept afterwards so the store, models and plot can be inspected)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="dispatchloop-demo-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise DemoInputError(f"--workdir {str(workdir)!r} is not empty; give a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def child_env(workdir: Path, bootstrap: str, options: DemoOptions) -> dict[str, str]:
    """The children's environment: the caller's, with everything that could reach a real
    system (store, registry, broker, topics, metrics port) pointed at the demo's own."""
    data = (workdir / "data").resolve()
    overrides = {
        "DATA_DIR": str(data),
        "STORE_URL": f"sqlite:///{(workdir / 'replay.db').resolve()}",
        "REGISTRY__ROOT": str(data / "registry"),
        "KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA__TOPIC": DEMO_TOPIC,
        "KAFKA__DLQ_TOPIC": f"{DEMO_TOPIC}.dlq",
        "KAFKA__MODELS_TOPIC": "dispatch.models",
        "KAFKA__GROUP_ID": DEMO_GROUP,
        "KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
        "KAFKA__SESSION_TIMEOUT_MS": "6000",
        "KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "METRICS__ENABLED": "false",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",  # the demo reads `run`'s "ready" line from its log
        "LOOP__CHECK_INTERVAL_S": str(options.check_interval_s),
        "LOOP__LEADER_CHECK_INTERVAL_S": "1",
        "LOOP__PUBLISH_INTERVAL_S": "1",
        "LOOP__NEW_EVENTS": str(options.new_events),
        "LOOP__TRAINER": options.trainer,
    }
    if options.min_events is not None:
        overrides["LOOP__MIN_EVENTS"] = str(options.min_events)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update({f"DISPATCHLOOP_{key}": value for key, value in overrides.items()})
    return env


def run_loop(
    settings: Settings,
    options: DemoOptions,
    workdir: Path,
    on_poll: Callable[[Snapshot], None],
) -> LoopRun:
    """Broker, `run`, `simulate --follow`; poll until enough cycles finished; stop both."""
    world = Scenario.seeded(options.seed)
    world_path = workdir / "world.json"
    world_path.write_text(world.to_json())
    with _broker(workdir) as broker:
        env = child_env(workdir, broker.bootstrap, options)
        children = Children(_spawn(["run"], env, workdir / "run.log"))
        try:
            _wait_ready(children.run, workdir / "run.log")
            children.simulate = _spawn(
                _simulate_args(options, world_path), env, workdir / "simulate.log",
                stdout=workdir / "simulate.json",
            )  # fmt: skip
            store_url = env["DISPATCHLOOP_STORE_URL"]
            root = Path(env["DISPATCHLOOP_REGISTRY__ROOT"])
            monitor = LoopMonitor(store_url, root, settings.reward)
            try:
                last, why = _watch(monitor, children, options, on_poll)
                _stop(children.simulate, "simulate", children)
                produced = _produced(workdir / "simulate.json")
                last = _catch_up(monitor, produced, last)
                _stop(children.run, "run", children)
                on_poll(last)
            finally:
                monitor.close()
        finally:
            for name, process in (("simulate", children.simulate), ("run", children.run)):
                if process is not None and process.poll() is None:
                    _stop(process, name, children)
    return LoopRun(workdir, store_url, root, world, last, produced, children.codes, why)


@contextmanager
def _broker(workdir: Path) -> Iterator[LocalBroker]:
    broker = start_broker(log_dir=workdir)
    try:
        yield broker
    finally:
        broker.stop()


def _simulate_args(options: DemoOptions, world: Path) -> list[str]:
    events = int(options.rate * options.max_minutes * 60 * 2) + 1_000  # SIGTERM ends it first
    return [
        "simulate", "--follow", "--json", "--events", str(events), "--rate", str(options.rate),
        "--epsilon", str(options.epsilon), "--seed", str(options.seed), "--scenario", str(world),
        "--company-id", COMPANY,
    ]  # fmt: skip


def _spawn(
    args: list[str], env: Mapping[str, str], log: Path, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    """`python -m dispatchloop.cli ARGS`, stderr to `log` (and stdout to `stdout`)."""
    command = [sys.executable, "-m", "dispatchloop.cli", *args]
    with log.open("wb") as err:
        if stdout is None:
            return subprocess.Popen(command, env=dict(env), stdout=err, stderr=subprocess.STDOUT)
        with stdout.open("wb") as out:
            return subprocess.Popen(command, env=dict(env), stdout=out, stderr=err)


def _wait_ready(process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `run` logged that it is ready (it has then migrated the store)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoFailedError(f"`run` exited with {process.returncode}: {_tail(log)}")
        if "ready: ingesting" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise DemoFailedError(f"`run` not ready after {READY_TIMEOUT_S:.0f} s: {_tail(log)}")


def _watch(
    monitor: LoopMonitor,
    children: Children,
    options: DemoOptions,
    on_poll: Callable[[Snapshot], None],
) -> tuple[Snapshot, str]:
    """Poll until `cycles` cycles finished, the time is up, or a child died."""
    deadline = time.monotonic() + options.max_minutes * 60
    while True:
        snapshot = monitor.poll()
        on_poll(snapshot)
        if snapshot.finished_cycles >= options.cycles:
            return snapshot, f"{snapshot.finished_cycles} cycles finished"
        if time.monotonic() >= deadline:
            return snapshot, f"--max-minutes {options.max_minutes:g} reached"
        for name, process in (("run", children.run), ("simulate", children.simulate)):
            if process is not None and process.poll() is not None:
                raise DemoFailedError(f"`{name}` exited early with {process.returncode}")
        time.sleep(POLL_S)


def _stop(process: subprocess.Popen[bytes], name: str, children: Children) -> None:
    """SIGTERM, then wait; SIGKILL only past the timeout (recorded as a non-zero code)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    children.codes[name] = process.returncode


def _produced(summary: Path) -> int | None:
    import json  # noqa: PLC0415

    with suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(summary.read_text().strip().splitlines()[-1])["events"])
    return None


def _catch_up(monitor: LoopMonitor, produced: int | None, last: Snapshot) -> Snapshot:
    """Let ingest store what `simulate` sent before `run` is stopped (nothing left behind)."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while produced is not None and last.events < produced and time.monotonic() < deadline:
        time.sleep(0.5)
        last = monitor.poll()
    return last


def _tail(path: Path, chars: int = 600) -> str:
    return path.read_text(errors="replace")[-chars:].strip()
