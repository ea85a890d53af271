"""Run a stage in a spawned child process with a time budget and a bounded stop.

Why a child: training and tuning hold a core for minutes; in a child they
cannot starve the daemon's ingest, health and metrics threads of the GIL, and
they can be stopped within a bound whatever they are doing. Why spawn: a forked
child would inherit the daemon's threads' locks (Kafka client, logging) and
torch's thread pool in whatever state they were.

The protocol over one pipe: the child sends ("progress", StageProgress)
any number of times, then exactly one ("ok", result) or ("error", kind, text).
Stopping: SIGTERM (the child's handler sets the stage's stop flag, so a stage
that polls it raises StageStoppedError and writes nothing), then SIGKILL after
`grace_s`. A child that exits without a verdict (killed, out of memory) is a
ChildCrashedError. Every failure is one of the errors.py classes, so the
scheduler knows whether to retry or stop.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, TypeVar

from dispatchloop.errors import DispatchloopError, FatalError, InputError, TransientError
from dispatchloop.pipeline.common import (
    ProgressFn,
    StageProgress,
    StageStoppedError,
    StopFlag,
    no_progress,
)

log = logging.getLogger(__name__)

ORPHAN_CHECK_S = 0.5
EXIT_ORPHANED = 3

A = TypeVar("A")
R = TypeVar("R")

ChildTarget = Callable[[A, StopFlag, ProgressFn], R]


class ChildTimeoutError(TransientError):
    """The child did not finish within its time budget and was stopped."""


class ChildCrashedError(TransientError):
    """The child exited without a result (killed, out of memory, a crash in C code)."""


class ChildFailedError(TransientError):
    """The child raised an exception that is not one of dispatchloop's own."""


@dataclass(frozen=True)
class ChildLimits:
    """How long a child may run and how long it gets to stop."""

    timeout_s: float
    """Time budget from start to result; beyond it the child is stopped."""
    grace_s: float
    """Between SIGTERM and SIGKILL."""
    poll_s: float = 0.1
    """How often the parent checks the stop flag and the deadline."""
    nice: int = 19
    """Added to the child's niceness (19: the lowest priority): on a busy host the kernel
    runs ingest, health and metrics before training; on an idle one training still gets
    every spare cycle (benchmarks/loop.py, BENCHMARKS.md "Loop")."""


_KINDS: dict[str, type[DispatchloopError]] = {
    "input": InputError,
    "transient": TransientError,
    "fatal": FatalError,
    "stopped": StageStoppedError,
    "failed": ChildFailedError,
}


def run_in_child(
    target: ChildTarget[A, R],
    arg: A,
    *,
    limits: ChildLimits,
    stop: StopFlag,
    progress: ProgressFn = no_progress,
    name: str = "stage",
) -> R:
    """Run `target(arg, stop, progress)` in a spawned child and return its result.

    `target` and `arg` must be picklable (a module-level function, frozen
    dataclasses). Raises the child's error class, StageStoppedError when `stop`
    was set, ChildTimeoutError or ChildCrashedError; the child is gone on return.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main,
        args=(
            target,
            arg,
            sender,
            logging.getLogger().getEffectiveLevel(),
            os.getpid(),
            limits.grace_s,
            limits.nice,
        ),
        name=f"dispatchloop-{name}",
        daemon=True,
    )
    process.start()
    sender.close()
    try:
        verdict = _await_verdict(process, receiver, limits, stop, progress)
    finally:
        _reap(process, limits.grace_s)
        receiver.close()
    if verdict[0] == "ok":
        return verdict[1]  # type: ignore[no-any-return]
    if verdict[0] == "error":
        raise _KINDS.get(verdict[1], ChildFailedError)(verdict[2])
    if verdict[0] == "stopped":
        raise StageStoppedError(f"{name} stopped on request")
    if verdict[0] == "timeout":
        raise ChildTimeoutError(f"{name} exceeded its time budget of {limits.timeout_s:g} s")
    raise ChildCrashedError(f"{name} child exited without a result ({verdict[1]})")


def _await_verdict(
    process: BaseProcess,
    receiver: Connection,
    limits: ChildLimits,
    stop: StopFlag,
    progress: ProgressFn,
) -> tuple[Any, ...]:
    deadline = time.monotonic() + limits.timeout_s
    while True:
        if receiver.poll(limits.poll_s):
            try:
                message = receiver.recv()
            except EOFError:
                return ("crashed", _exit_description(process))
            if message[0] == "progress":
                progress(message[1])
                continue
            return tuple(message)
        if not process.is_alive() and not receiver.poll(0):
            return ("crashed", _exit_description(process))
        if stop.is_set():
            return ("stopped",)
        if time.monotonic() > deadline:
            return ("timeout",)


def _exit_description(process: BaseProcess) -> str:
    process.join(timeout=1.0)
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _reap(process: BaseProcess, grace_s: float) -> None:
    """SIGTERM, wait `grace_s`, SIGKILL: the child is gone when this returns."""
    if process.is_alive():
        process.terminate()
        process.join(timeout=grace_s)
    if process.is_alive():
        log.warning("child %s ignored SIGTERM for %.1f s; killing it", process.name, grace_s)
        process.kill()
    process.join(timeout=10.0)


def _watch_parent(parent_pid: int, stop: threading.Event, grace_s: float) -> None:
    """A parent killed with SIGKILL cannot stop its child: the child notices and stops itself.

    Orphaned (re-parented), it sets the stop flag — a training stage raises at its
    next step and saves nothing — and exits hard after the grace if still running.
    """
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    stop.set()
    time.sleep(grace_s)
    os._exit(EXIT_ORPHANED)


def _child_main(  # noqa: PLR0917 - the spawn target's positional args
    target: ChildTarget[Any, Any],
    arg: Any,
    sender: Connection,
    log_level: int,
    parent_pid: int,
    grace_s: float,
    nice: int,
) -> None:
    """The child's entry point: it owns its process-wide state (signals, logging, priority)."""
    if nice:
        os.nice(nice)
    stop = threading.Event()
    threading.Thread(
        target=_watch_parent, args=(parent_pid, stop, grace_s), name="watch-parent", daemon=True
    ).start()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(
        level=log_level, stream=sys.stderr, format="%(asctime)s child %(name)s: %(message)s"
    )

    def report(item: StageProgress) -> None:
        try:
            sender.send(("progress", item))
        except OSError:  # the parent is gone; the watcher stops us
            stop.set()

    verdict: tuple[Any, ...]
    try:
        verdict = ("ok", target(arg, stop, report))
    except StageStoppedError as exc:
        verdict = ("error", "stopped", str(exc))
    except InputError as exc:
        verdict = ("error", "input", str(exc))
    except FatalError as exc:
        verdict = ("error", "fatal", str(exc))
    except TransientError as exc:
        verdict = ("error", "transient", str(exc))
    except Exception as exc:  # the child's last word: any bug, reported typed
        verdict = ("error", "failed", f"{type(exc).__name__}: {exc}")
    try:
        sender.send(verdict)
    except OSError:  # the parent is gone (killed): nobody to tell
        pass
    finally:
        sender.close()
