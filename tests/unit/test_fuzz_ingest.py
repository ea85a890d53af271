"""The coverage-guided fuzz target (tests/fuzz/fuzz_ingest.py) for a bounded time.

It starts from the committed corpus (a copy: what it finds stays in tmp; grow the
corpus on purpose with the command in the target's docstring). Its invariant is
"classified, never raised": any exception or disagreement between the fast path,
the models and the store is a crash, and libFuzzer writes the input to crash-*.
DISPATCHLOOP_FUZZ_SECONDS sets the budget (default 20 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
SECONDS = int(os.environ.get("DISPATCHLOOP_FUZZ_SECONDS", "20"))


def test_screening_models_and_store_classify_every_input_never_raise(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus", corpus)
    seeds = len(list(corpus.iterdir()))
    options = [f"-max_total_time={SECONDS}", "-rss_limit_mb=2048", "-timeout=20"]
    source = str(FUZZ.parents[1] / "src")  # this checkout's code, whatever is installed
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_ingest.py"), *options, str(corpus)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        check=False,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    found = [(c.name, c.read_bytes()[:300]) for c in crashes]
    assert result.returncode == 0 and not crashes, (found, result.stderr[-3_000:])
    runs = re.search(r"Done (\d+) runs", result.stderr)
    assert runs is not None, result.stderr[-2_000:]
    assert int(runs.group(1)) > seeds + 1_000, "the fuzzer barely ran"
