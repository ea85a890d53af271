"""Progress for long work: a bar on a terminal, periodic structured log lines in a service.

Training, tuning, evaluation and bulk ingest all report through `Progress`, so
an operator sees the same figures whether they watch a terminal or journald.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """Advance with `update(n, **fields)`; fields show after the bar and in log lines."""

    def __init__(
        self,
        description: str,
        total: float | None,
        logger: logging.Logger,
        bar: RichProgress | None,
        log_every_s: float,
    ) -> None:
        self._description = description
        self._total = total
        self._logger = logger
        self._bar = bar
        self._task: TaskID | None = (
            bar.add_task(description, total=total, fields="") if bar is not None else None
        )
        self._done = 0.0
        self._log_every_s = log_every_s
        self._last_log = time.monotonic()

    @property
    def done(self) -> float:
        return self._done

    def update(self, advance: float = 1, **fields: Any) -> None:
        self._done += advance
        text = "  ".join(f"{key}={_fmt(value)}" for key, value in fields.items())
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=advance, fields=text)
        elif time.monotonic() - self._last_log >= self._log_every_s:
            self._last_log = time.monotonic()
            self._log(fields)

    def _log(self, fields: dict[str, Any]) -> None:
        self._logger.info(
            "%s: %s/%s %s",
            self._description,
            _fmt(self._done),
            "?" if self._total is None else _fmt(self._total),
            " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()),
            extra={
                "progress": {
                    "task": self._description,
                    "done": self._done,
                    "total": self._total,
                    **fields,
                }
            },
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def interactive() -> bool:
    """A person is watching: stderr is a terminal."""
    return sys.stderr.isatty()


@contextmanager
def progress(
    description: str,
    total: float | None = None,
    *,
    logger: logging.Logger | None = None,
    show_bar: bool | None = None,
    log_every_s: float = 10.0,
) -> Iterator[Progress]:
    """A progress reporter; a bar when `show_bar` (default: on a terminal), else logs."""
    logger = logger or logging.getLogger("dispatchloop.progress")
    if show_bar is None:
        show_bar = interactive()
    if not show_bar:
        yield Progress(description, total, logger, None, log_every_s)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[fields]}"),
    ]
    with RichProgress(*columns, console=Console(stderr=True), transient=False) as bar:
        yield Progress(description, total, logger, bar, log_every_s)
