"""The judge, the registry and the outbox publisher as the cycle sees them.

The loop calls these; it does not build them. The promotion gate
(evaluation/) and the model registry (registry/) implement them structurally —
neither imports this module — and the `run` entry point (daemon/run.py) plugs
them in. Until they land, `run` refuses to run cycles rather than promote
through a stand-in (see daemon/run.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dispatchloop.events import DecisionRecord
from dispatchloop.pipeline.canary import CanaryCheck
from dispatchloop.pipeline.common import StopFlag
from dispatchloop.pipeline.fit import ScenarioFit


class Judge(Protocol):
    """The promotion gate: a decision record for a candidate against the champion."""

    def __call__(
        self, candidate_dir: Path, champion: str | None, fit: ScenarioFit, stop: StopFlag
    ) -> DecisionRecord:
        """Judge `candidate_dir` against version `champion` (None: nothing serves yet)
        in the fitted scenario. Must give up (StageStoppedError) soon after `stop`
        is set; long simulations belong in `pipeline.child.run_in_child`.
        InputError / TransientError / FatalError as in errors.py."""
        ...


class Registrar(Protocol):
    """The model registry's write side, as one cycle uses it."""

    def champion(self) -> str | None:
        """The version the `champion` alias points at (None before the first promotion)."""
        ...

    def register(self, model_dir: Path, record: DecisionRecord) -> str:
        """Register the candidate with its decision record, whatever the verdict; its version.

        Atomic: a crash leaves either no version or a complete one."""
        ...

    def promote(self, version: str, record: DecisionRecord, expected_previous: str | None) -> None:
        """Move `champion` to `version` if it still points at `expected_previous`
        (compare-and-swap: the fence against a stale leader), writing the
        promotion event to the outbox in the same transaction. Raises
        TransientError when the alias moved meanwhile (nothing is changed)."""
        ...


class Publisher(Protocol):
    """The transactional outbox's relay to `dispatch.models`."""

    def publish_pending(self) -> int:
        """Send every unsent outbox row (idempotent per row); return how many were sent.
        TransientError when the broker is unavailable (the rows stay for next time)."""
        ...


class Canary(Protocol):
    """Champion/challenger on live traffic (pipeline.canary.RegistryCanary)."""

    @property
    def share(self) -> float:
        """The traffic share a promoted candidate starts with as challenger (0: no canary)."""
        ...

    def challenger(self) -> str | None:
        """The version the `challenger` alias points at now (for the compare-and-swap)."""
        ...

    def start(self, version: str, record: DecisionRecord, expected: str | None) -> None:
        """`challenger` := version at `share`, if it still points at `expected`
        (TransientError when it moved meanwhile; nothing changes)."""
        ...

    def check(self, leading: Callable[[], bool]) -> CanaryCheck:
        """Judge the running canary and act on a decisive verdict (moves only while
        `leading()`); a look without a canary returns action `none`."""
        ...
