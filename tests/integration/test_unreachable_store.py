"""Every command that needs the store, pointed at one that is unreachable: exit 2 and one
sentence naming DISPATCHLOOP_STORE_URL (no traceback, no password)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

UNREACHABLE = "postgresql+psycopg://nobody:hunter2@127.0.0.1:1/x"
COMMANDS = {
    "evaluate": ["evaluate", "--scenario", "store", "--policies", "greedy", "--episodes", "2"],
    "evaluate --ope": ["evaluate", "--ope"],
    "tune": ["tune", "--scenario", "store", "--trials", "1"],
    "compare": ["compare", "--baseline", "{p}", "--candidate", "{p}", "--scenario", "store"],
    "train --from-store": ["train", "--from-store", "--out", "{out}"],
    "cycles list": ["cycles", "list"],
    "cycles show": ["cycles", "show", "1"],
    "retrain": ["retrain", "--reason", "test"],
    "store stats": ["store", "stats"],
    "models list": ["models", "list"],
    "gate": ["gate", "--candidate", "greedy", "--champion", "random"],
    "run": ["run"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unreachable_store_is_exit_2_in_one_sentence(name: str, tmp_path: Path):
    params = tmp_path / "params.json"
    params.write_text("{}")
    args = [a.format(p=params, out=tmp_path / "model") for a in COMMANDS[name]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env["DISPATCHLOOP_STORE_URL"] = UNREACHABLE
    env["DISPATCHLOOP_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert "127.0.0.1" in result.stderr and "DISPATCHLOOP_STORE_URL" in result.stderr
