"""pipeline.child: a real spawned child, its verdicts mapped to errors.py, stops bounded.

The targets here are tiny module-level functions (the child imports this module
by name); the training child is exercised in tests/integration/test_pipeline_stages.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from dispatchloop.errors import FatalError, InputError
from dispatchloop.pipeline.child import (
    ChildCrashedError,
    ChildLimits,
    ChildTimeoutError,
    run_in_child,
)
from dispatchloop.pipeline.common import (
    StageProgress,
    StageStoppedError,
    StopFlag,
    remove_staging,
)

LIMITS = ChildLimits(timeout_s=30.0, grace_s=2.0)


def _double(value: int, stop: StopFlag, progress) -> int:
    progress(StageProgress("double", 1, 1))
    return value * 2


def _raise(kind: str, stop: StopFlag, progress) -> int:
    raise {"input": InputError, "fatal": FatalError}[kind](f"{kind} problem")


def _polls_stop(path: str, stop: StopFlag, progress) -> int:
    Path(path).write_text("started")
    while not stop.is_set():
        time.sleep(0.05)
    raise StageStoppedError("stopped while polling")


def _ignores_sigterm(path: str, stop: StopFlag, progress) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    staging = Path(path)
    (staging.parent / f".{staging.name}.half").mkdir()  # a save in progress
    Path(path + ".started").write_text("x")
    while True:
        time.sleep(0.05)


def _dies(_arg: None, stop: StopFlag, progress) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _niceness(_arg: None, stop: StopFlag, progress) -> int:
    return os.nice(0)


def test_the_child_runs_at_a_lower_priority_than_its_parent():
    mine = os.nice(0)
    assert mine < 19
    assert run_in_child(_niceness, None, limits=LIMITS, stop=threading.Event()) == 19


def test_result_and_progress_come_back():
    seen: list[StageProgress] = []
    assert (
        run_in_child(_double, 21, limits=LIMITS, stop=threading.Event(), progress=seen.append) == 42
    )
    assert seen == [StageProgress("double", 1, 1)]


@pytest.mark.parametrize(("kind", "error"), [("input", InputError), ("fatal", FatalError)])
def test_child_errors_keep_their_class(kind: str, error: type[Exception]):
    with pytest.raises(error, match=f"{kind} problem"):
        run_in_child(_raise, kind, limits=LIMITS, stop=threading.Event())


def test_stop_reaches_a_polling_child_through_sigterm(tmp_path: Path):
    stop = threading.Event()
    marker = tmp_path / "started"
    timer = threading.Thread(target=lambda: (_wait_for(marker), stop.set()))
    timer.start()
    started = time.monotonic()
    with pytest.raises(StageStoppedError):
        run_in_child(_polls_stop, str(marker), limits=LIMITS, stop=stop)
    timer.join()
    assert time.monotonic() - started < 25


def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path):
    out = tmp_path / "model"
    stop = threading.Event()
    timer = threading.Thread(target=lambda: (_wait_for(Path(f"{out}.started")), stop.set()))
    timer.start()
    with pytest.raises(StageStoppedError):
        run_in_child(_ignores_sigterm, str(out), limits=ChildLimits(30.0, grace_s=0.5), stop=stop)
    timer.join()
    assert [p.name for p in remove_staging(out)] == [".model.half"]
    assert not out.exists() and not list(tmp_path.glob(".model.*"))


def test_budget_exceeded_is_a_timeout(tmp_path: Path):
    started = time.monotonic()
    with pytest.raises(ChildTimeoutError, match="time budget of 3 s"):
        run_in_child(
            _polls_stop,
            str(tmp_path / "m"),
            limits=ChildLimits(timeout_s=3.0, grace_s=5.0),
            stop=threading.Event(),
        )
    assert time.monotonic() - started < 12


def test_a_child_killed_from_outside_is_a_crash():
    with pytest.raises(ChildCrashedError, match="SIGKILL"):
        run_in_child(_dies, None, limits=LIMITS, stop=threading.Event())
