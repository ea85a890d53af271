"""sd_notify on a real unix datagram socket, as systemd's NOTIFY_SOCKET receives it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatchloop.daemon.systemd import SystemdNotifier, watchdog_interval_s


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    try:
        yield sock, path
    finally:
        sock.close()


def test_messages_reach_the_socket(manager: tuple[socket.socket, str]):
    sock, path = manager
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("consumer joined")
    notifier.watchdog()
    notifier.status("cycle 3: train")
    notifier.status("cycle 3: train")  # unchanged: not re-sent
    notifier.status("cycle 3: judge")
    notifier.stopping()
    received = [sock.recv(4096).decode() for _ in range(5)]
    notifier.close()
    assert received == [
        "READY=1\nSTATUS=consumer joined",
        "WATCHDOG=1",
        "STATUS=cycle 3: train",
        "STATUS=cycle 3: judge",
        "STOPPING=1",
    ]


def test_abstract_namespace_socket():
    name = f"dispatchloop-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        SystemdNotifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_without_a_manager_everything_is_a_no_op(tmp_path: Path):
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    gone.watchdog()  # the manager went away: logged, not raised


def test_watchdog_interval_is_half_of_watchdog_sec_for_this_pid():
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(mine) == 10.0
