"""kill -9 of the shipped `dispatchloop run` at all six points of a cycle (fit, train,
judge, register, promote, publish), then a restart: the full version of the suite's
two-point `tests/integration/test_run_crash_points.py`.

    .venv/bin/python benchmarks/crash_points.py

Runs that test file with DISPATCHLOOP_TEST_ALL_CRASH_POINTS=1 (one point after another,
5–8 min on 2 cores) and prints a Markdown table: point, outcome, seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/integration/test_run_crash_points.py"


def main() -> None:
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        env = {**os.environ, "DISPATCHLOOP_TEST_ALL_CRASH_POINTS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider",
             f"--junitxml={report}"],
            cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        cases = ET.parse(report).getroot().iter("testcase")
        rows = []
        for case in cases:
            point = case.get("name", "").rpartition("[")[2].rstrip("]")
            failed = case.find("failure") is not None or case.find("error") is not None
            rows.append((point, "FAILED" if failed else "passed", float(case.get("time", 0))))
    print(f"Run {started:%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()[0]:.2f} after.\n")
    print("| point | outcome | seconds |")
    print("|---|---|---:|")
    for point, outcome, seconds in rows:
        print(f"| {point} | {outcome} | {seconds:.1f} |")
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
