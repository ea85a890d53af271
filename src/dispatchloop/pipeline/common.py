"""What every stage is handed besides its request: a stop flag and a progress reporter."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dispatchloop.errors import TransientError


class StopFlag(Protocol):
    """Anything with `is_set()`: a threading.Event, a multiprocessing Event."""

    def is_set(self) -> bool:
        """True once the stage should give up as soon as it safely can."""
        ...


class StageStoppedError(TransientError):
    """The stage was asked to stop before it finished; it wrote nothing."""


@dataclass(frozen=True)
class StageProgress:
    """One progress report of a long stage (logged, shown as STATUS=, exported)."""

    stage: str
    """Which stage reports: fit, tune, train."""
    done: float
    """Work done so far, in the stage's own unit (steps, trials)."""
    total: float | None
    """Work planned, when known."""
    loss: float | None = None
    """Latest training loss, when the stage trains."""


ProgressFn = Callable[[StageProgress], None]


def no_progress(_report: StageProgress) -> None:
    """The default reporter: stages must not care whether anyone listens."""


def remove_staging(out: Path) -> list[Path]:
    """Delete staging directories a killed save left next to `out`; return them.

    save_model writes into `.<name>.<random>` and renames; a SIGKILL between the
    two leaves that sibling behind (never a half-written `out`).
    """
    removed = []
    for staging in out.parent.glob(f".{out.name}.*"):
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed
