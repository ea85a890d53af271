"""`dispatchloop demo`: the closed loop on one machine, with embedded defaults.

An embedded broker (`broker`, the `demo` extra), then the product itself as child
processes: `dispatchloop run` (ingest, cycles: fit → train → judge → register →
promote → publish) and `dispatchloop simulate --follow` (a dispatch system deciding
through `serving`: greedy with exploration until the first promotion, then what
dispatch.models promotes). `loop` starts and stops them, `monitor` reads what they
store, `view` shows it live, `report` computes the figures and the verdict, `plot`
saves the PNG. The demo re-implements no stage, so it breaks when the product breaks.

It sits at the top of the package under `cli` (import-linter layers): it may import
everything but the CLI, nothing but the CLI imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dispatchloop.demo.loop import DemoOptions, LoopRun, prepare_workdir, run_loop
from dispatchloop.demo.monitor import LoopMonitor
from dispatchloop.demo.plot import save_plot
from dispatchloop.demo.report import (
    DemoFigures,
    compute_figures,
    promotion_checks,
    verdict,
    world_levels,
)
from dispatchloop.demo.view import LoopView
from dispatchloop.settings import Settings

__all__ = ["DemoOptions", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    """The figures, their one-paragraph verdict and where the plot is."""

    figures: DemoFigures
    verdict: str
    plot: Path


def run_demo(
    settings: Settings, options: DemoOptions, workdir: Path | None, view: LoopView
) -> DemoResult:
    """Run the loop until `options.cycles` cycles finished, then judge what it did."""
    started = time.monotonic()
    workdir = prepare_workdir(workdir)
    with view:
        run = run_loop(settings, options, workdir, view.update)
    figures = _figures(settings, options, run, started)
    plot = save_plot(figures, workdir / "realised_reward.png")
    return DemoResult(figures, verdict(figures), plot)


def _figures(settings: Settings, options: DemoOptions, run: LoopRun, started: float) -> DemoFigures:
    monitor = LoopMonitor(run.store_url, run.registry_root, settings.reward)
    try:
        decisions = monitor.decisions()
        promotions = promotion_checks(monitor.registry()) if run.registry_root.is_dir() else []
    finally:
        monitor.close()
    levels = world_levels(run.world, settings.reward, options.gap_episodes)
    return compute_figures(run, decisions, promotions, levels, time.monotonic() - started)
