"""The headline figure: the closed loop from greedy with exploration, per seed.

Runs `dispatchloop demo --json --seed S` (the real `run` and `simulate --follow`
child processes, the embedded broker, a SQLite store; the loop's budgets and the
gate's thresholds are the shipped `[loop]`/`[gate]` defaults) once per seed and
prints one row per seed, then checks the issue's target for each:

  within 3 cycles, the realised mean reward per live decision of the promoted
  models beats greedy's realised reward with a 99 % CI above zero, no promoted
  version is worse than its predecessor on the paired test, and the whole run
  takes <= 15 minutes; plus the share of the greedy→hindsight gap closed.

    PYTHONPATH=src .venv/bin/python benchmarks/closed_loop.py [--seeds 0 1 2] [--cycles 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TARGET_MINUTES = 15.0


def run_seed(seed: int, cycles: int, extra: list[str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"closed-loop-s{seed}-")) / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env["DISPATCHLOOP_LOG_LEVEL"] = "WARNING"
    command = [sys.executable, "-m", "dispatchloop.cli", "demo", "--json", "--seed", str(seed),
               "--cycles", str(cycles), "--workdir", str(workdir), *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed}: demo exited {result.returncode}: {result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout)
    figures["verdict"] = result.stderr.strip().splitlines()[-1]
    return figures


def met(figures: dict[str, Any], cycles: int) -> tuple[bool, str]:
    """The target for one seed, and the reason when missed."""
    ci = figures["live_vs_greedy"]["ci99"]
    if ci is None:
        return False, "no promoted model decided"
    if ci[0] <= 0:
        return False, f"99 % CI {ci} not above zero"
    if figures["worse_promotions"]:
        return False, f"{figures['worse_promotions']} promotions worse than their predecessor"
    if figures["cycles"] > cycles:
        return False, f"{figures['cycles']} cycles"
    if figures["seconds"] > TARGET_MINUTES * 60:
        return False, f"{figures['seconds']:.0f} s > {TARGET_MINUTES:.0f} min"
    return True, "met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more `demo` options, after --")
    args = parser.parse_args()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}"
          f", {os.cpu_count()} CPUs, load before {os.getloadavg()[0]:.2f}")  # fmt: skip
    head = ("| seed | cycles (outcomes) | promotions | worse | live − greedy per decision "
            "[99 % CI] | live / greedy decisions | greedy realised | gap closed [99 % CI] "
            "| seconds | load after | target |")  # fmt: skip
    print(head)
    print("|---" * 11 + "|")
    rows = []
    for seed in args.seeds:
        figures = run_seed(seed, args.cycles, args.extra)
        ok, why = met(figures, args.cycles)
        rows.append(ok)
        lvg, gap = figures["live_vs_greedy"], figures["gap_closed_ci99"]
        ci = lvg["ci99"] or [float("nan")] * 2
        live, greedy = lvg["live"] or {"decisions": 0}, lvg["greedy"] or {"decisions": 0}
        print(
            f"| {seed} | {figures['cycles']} ({figures['cycle_outcomes']}) "
            f"| {figures['promotions']} | {figures['worse_promotions']} "
            f"| {lvg['mean_diff'] if lvg['mean_diff'] is not None else 'n/a'} "
            f"[{ci[0]}, {ci[1]}] | {live['decisions']} / {greedy['decisions']} "
            f"| {greedy.get('mean')} | {figures['gap_closed']} {gap} | {figures['seconds']:.0f} "
            f"| {os.getloadavg()[0]:.2f} | {why} |",
            flush=True,
        )
        print(f"<!-- seed {seed}: {figures['verdict']} -->", flush=True)
    print(f"target met for {sum(rows)} of {len(rows)} seeds")


if __name__ == "__main__":
    main()
