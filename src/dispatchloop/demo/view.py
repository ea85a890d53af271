"""The live terminal view: a rich panel on a terminal, a plain progress line otherwise."""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from dispatchloop.demo.monitor import Snapshot

BARS = "▁▂▃▄▅▆▇█"
LINE_EVERY_S = 15.0


def sparkline(values: list[float]) -> str:
    """Unicode bars of `values`, scaled to their own range."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(BARS[min(int((v - low) / span * len(BARS)), len(BARS) - 1)] for v in values)


def progress_line(snapshot: Snapshot) -> str:
    """One line: time, events, rate, cycles, champion and each arm's mean."""
    arms = ", ".join(f"{arm} {mean:+.2f} (n={n})" for arm, (n, mean) in snapshot.arms.items())
    running = [c for c in snapshot.cycles if c.outcome == "running"]
    stage = f", cycle {running[-1].id} at {running[-1].stage}" if running else ""
    return (
        f"demo {snapshot.seconds:5.0f} s: {snapshot.events} events "
        f"({snapshot.events_per_s:.0f}/s), {snapshot.finished_cycles} cycles done{stage}, "
        f"champion {snapshot.champion or 'none (greedy)'}; reward/decision: {arms or '-'}"
    )


def render(snapshot: Snapshot) -> Group:
    """The rich panel: cycles with their gate verdicts, and realised reward by version."""
    cycles = Table(title="cycles", expand=True)
    for column in ("id", "trigger", "stage", "outcome", "version", "gate / reasons"):
        cycles.add_column(column, overflow="fold")
    for cycle in snapshot.cycles[-8:]:
        reasons = "; ".join(cycle.reasons)[:140]
        cycles.add_row(str(cycle.id), cycle.trigger, cycle.stage, cycle.outcome,
                       cycle.version or "", reasons)  # fmt: skip
    arms = Table(title="realised reward per decision, by deciding version", expand=True)
    for column in ("decided by", "decisions", "mean", "recent episodes"):
        arms.add_column(column)
    for arm, (n, mean) in snapshot.arms.items():
        arms.add_row(arm, str(n), f"{mean:+.3f}", sparkline(snapshot.series.get(arm, [])))
    head = (
        f"[bold]dispatchloop demo[/] {snapshot.seconds:.0f} s · {snapshot.events} events "
        f"({snapshot.events_per_s:.0f}/s) · champion: {snapshot.champion or 'none (greedy)'}"
    )
    return Group(head, cycles, arms)


class LoopView(AbstractContextManager["LoopView"]):
    """Shows snapshots as they come: rich Live on a terminal, else a line every 15 s."""

    def __init__(self, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self._console = Console(file=stream)
        self._stream = stream
        self._quiet = quiet
        self._live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> LoopView:
        if not self._quiet and self._console.is_terminal:
            self._live = Live(console=self._console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def update(self, snapshot: Snapshot) -> None:
        if self._quiet:
            return
        if self._live is not None:
            self._live.update(render(snapshot))
        elif time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            print(progress_line(snapshot), file=self._stream, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, traceback)
