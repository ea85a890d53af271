"""sd_notify over `NOTIFY_SOCKET` (READY=1, WATCHDOG=1, STATUS=, STOPPING=1), no libsystemd.

A no-op when `NOTIFY_SOCKET` is unset (a terminal, a container), so the daemon
never needs to know how it was started. `WatchdogSec` reaches the process as
`WATCHDOG_USEC` (and `WATCHDOG_PID`); `watchdog_interval_s` turns it into the
period the scheduler must beat (half of it, as sd_watchdog_enabled(3) advises).
The socket is read once, by the entry point, from the environment it passes in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to the service manager; every method is safe without one."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_status = ""
        if self._address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._socket is not None

    def ready(self, status: str = "") -> None:
        """READY=1: the consumer joined and the store answers."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        """WATCHDOG=1: the scheduler loop is alive."""
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS=: one line saying what the daemon does (sent when it changes)."""
        line = text.replace("\n", " ")[:200]
        if line != self._last_status:
            self._last_status = line
            self._send(f"STATUS={line}")

    def stopping(self, status: str = "") -> None:
        """STOPPING=1: shutdown has begun."""
        self._send("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> None:
        """RELOADING=1 … READY=1 brackets a configuration reload."""
        self._send("RELOADING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._socket is None or self._address is None:
            return
        with self._lock:
            try:
                self._socket.sendto(message.encode(), self._address)
            except OSError as exc:  # the manager went away: the daemon goes on regardless
                log.warning("sd_notify %r failed: %s", message.split("=", 1)[0], exc)


def watchdog_interval_s(environ: Mapping[str, str]) -> float | None:
    """Half the configured WatchdogSec for this process, None when no watchdog is set."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
