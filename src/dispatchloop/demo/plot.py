"""The saved figure: realised reward per decision over time, by deciding version.

matplotlib with the Agg backend (no display); written to a staging file, fsynced
and renamed, so the PNG on disk is whole or absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dispatchloop.demo.figures import rolling_mean
from dispatchloop.demo.monitor import is_greedy
from dispatchloop.demo.report import DemoFigures

ROLLING_DECISIONS = 19 * 20
"""The rolling mean's shortest window: twenty episodes of the default world."""
WINDOWS_PER_RUN = 60
"""A long run widens the window to about 1/60 of its decisions (readable, not noise)."""


def save_plot(figures: DemoFigures, path: Path) -> Path:
    """Rolling mean per version in decision order, greedy's and hindsight's levels,
    promotions as vertical lines."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - heavy, imported on use

    figure = Figure(figsize=(10, 5), dpi=110)
    axes = figure.subplots()
    rewards = np.array([d.reward for d in figures.decisions], dtype=np.float64)
    window = max(ROLLING_DECISIONS, rewards.size // WINDOWS_PER_RUN)
    min_periods = window // 4  # a version's first decisions are not drawn alone (no spike)
    arms = np.array([d.arm for d in figures.decisions])
    for arm in dict.fromkeys(arms.tolist()):
        where = np.flatnonzero(arms == arm)
        label = "greedy (before any promotion)" if is_greedy(arm) else arm
        means = rolling_mean(rewards[where], window)
        shown = slice(min_periods, None) if where.size > 2 * min_periods else slice(None)
        axes.plot(where[shown], means[shown], label=label, lw=1.2)
    comparison = figures.comparison
    greedy_level = comparison.greedy.mean if comparison else None
    if greedy_level is not None:
        axes.axhline(greedy_level, color="grey", ls="--", lw=1, label="greedy, realised")
    for level, name in ((figures.levels.greedy, "greedy"), (figures.levels.hindsight, "hindsight")):
        axes.axhline(level, color="black", ls=":", lw=0.8)
        axes.annotate(f"{name}, simulated without exploration", (0, level), fontsize=7,
                      xytext=(2, 2), textcoords="offset points")  # fmt: skip
    first = {arm: int(np.argmax(arms == arm)) for arm in dict.fromkeys(arms.tolist())}
    for promotion in figures.promotions:
        if promotion.version in first:
            axes.axvline(first[promotion.version], color="green", lw=0.8, alpha=0.7)
            axes.text(first[promotion.version], axes.get_ylim()[1], f" {promotion.version}",
                      rotation=90, va="top", fontsize=7, color="green")  # fmt: skip
    axes.set_xlabel("decision (in decided_at order)")
    axes.set_ylabel(f"realised reward per decision (rolling {window})")
    axes.set_title("dispatchloop demo: the closed loop, live decisions by model version")
    axes.legend(loc="lower right", fontsize=8)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("wb") as handle:
        figure.savefig(handle, format="png")
        handle.flush()
        os.fsync(handle.fileno())
    staging.replace(path)
    return path
