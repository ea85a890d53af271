"""`dispatchloop demo` end to end with small sizes: its own real broker, a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dispatchloop.replay import open_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _demo(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")},
        "DISPATCHLOOP_LOG_FORMAT": "json",
        "DISPATCHLOOP_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", "demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
        check=False,
    )


def test_demo_runs_the_whole_loop_and_prints_its_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = _demo(
        workdir,
        "--events",
        "190",
        "--episodes",
        "6",
        "--offline-steps",
        "64",
        "--finetune-steps",
        "400",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "2/5 simulated 190 decisions" in out
    assert "3/5 ingested: stored 190, duplicates 0, dead letters 0" in out
    assert "events:   190" in out
    assert "episodes: 10" in out
    assert "64 offline gradient steps on 190 logged transitions" in out
    table = out[out.index("5/5") :].splitlines()
    for name in ("random", "greedy", "dqn", "hindsight"):
        assert any(line.startswith(name) for line in table), out
    assert out.strip().splitlines()[-1].startswith("The demo DQN ")
    # What the summary claims is on disk: the store holds every event once, the model loads.
    store = open_store(f"sqlite:///{workdir / 'replay.db'}", create=False)
    try:
        assert store.stats().events == 190
    finally:
        store.close()
    card = json.loads((workdir / "models" / "demo-dqn" / "card.json").read_text())
    assert card["model_version"] == "demo"
    assert card["training"]["logged_transitions"] == 190
    assert card["data_window"]["events"] == 190


def test_demo_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = _demo(tmp_path, "--events", "100")
    assert result.returncode == 2
    assert "is not empty" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
