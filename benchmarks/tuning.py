"""Tuning benchmark: study wall time, tuned-vs-default on TEST seeds, 1 vs 2 workers.

(a) A study of --trials trials on the default scenario, run by two
    `dispatchloop tune` worker processes sharing one PostgreSQL study (one per
    core): wall time, share of trials pruned, best validation return.
    The original tuner needed 2-3 h for 50 trials; the target here is <= 10 min.
(b) The tuned configuration against the default DQNConfig, both trained with
    the per-trial budget on the same training seeds, on held-out TEST seeds:
    paired mean difference with its 99 % interval (evaluation/paired.py).
(c) Trials per minute with 1 worker and with 2 workers on PostgreSQL, same
    trials (no pruning; fewer trials than TPE's random start-up, so both runs
    train exactly the same configurations), from the studies' trial
    timestamps (process start-up excluded). Target: >= 1.7x.

Prints a table; `--record` also rewrites the `## Tuning` section of
benchmarks/BENCHMARKS.md (and only that section).

    .venv/bin/python benchmarks/tuning.py --record            # full run (~15 min)
    .venv/bin/python benchmarks/tuning.py --trials 4 --steps-per-trial 300 \\
        --test-episodes 4 --scale-trials 2                     # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.postgres import scratch_database
from dispatchloop.tuning.compare import CompareRequest, compare

BENCH_FILE = Path(__file__).with_name("BENCHMARKS.md")
SECTION = "## Tuning (`benchmarks/tuning.py`)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--steps-per-trial", type=int, default=6_000)
    parser.add_argument("--validation-episodes", type=int, default=20)
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--test-episodes", type=int, default=200)
    parser.add_argument("--training-seeds", type=int, default=3)
    parser.add_argument("--scale-trials", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="Write BENCHMARKS.md.")
    return parser.parse_args()


def run_workers(
    n_workers: int, study: str, trials: int, *, pg: str, args: argparse.Namespace, work: Path
) -> tuple[float, dict[str, Any]]:
    """Start n `dispatchloop tune` processes on one study; wall seconds and the last result."""
    extra = ["--pruner", "none"] if study.startswith("scale") else []
    command = [
        sys.executable,
        "-m",
        "dispatchloop.cli",
        "tune",
        "--storage",
        pg,
        "--study",
        study,
        "--trials",
        str(trials),
        "--steps-per-trial",
        str(args.steps_per_trial),
        "--validation-episodes",
        str(args.validation_episodes),
        "--evaluations",
        str(args.evaluations),
        "--output",
        str(work / f"{study}.json"),
        "--json",
        *extra,
    ]
    env = {**os.environ, "DISPATCHLOOP_DATA_DIR": str(work), "DISPATCHLOOP_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(n_workers)
    ]
    outputs = []
    for process in processes:
        stdout, _ = process.communicate(timeout=6 * 3600)
        if process.returncode != 0:
            raise SystemExit(f"tune worker failed with exit code {process.returncode}")
        outputs.append(json.loads(stdout))
    return time.perf_counter() - started, outputs[-1]


def trials_per_minute(storage: str, study_name: str) -> float:
    """Finished trials over the span from the first trial's start to the last one's end.

    Measured from the study's own timestamps, so process start-up (importing torch)
    is not counted: the figure is the study's trial throughput.
    """
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED)
    )
    start = min(t.datetime_start for t in trials if t.datetime_start is not None)
    end = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    return len(trials) / (end - start).total_seconds() * 60


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    rows: list[tuple[str, str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp,
        scratch_database("dl_bench") as pg,
    ):
        work = Path(tmp)
        wall_a, study_a = run_workers(2, "study-a", args.trials, pg=pg, args=args, work=work)
        finished = study_a["complete"] + study_a["pruned"]
        rows += [
            (f"(a) {args.trials}-trial study, 2 workers, wall", f"{wall_a / 60:.1f} min"),
            (
                "(a) trials pruned",
                f"{study_a['pruned']}/{finished} ({study_a['pruned'] / finished:.0%})",
            ),
            ("(a) best validation return (mean of episodes)", f"{study_a['best_value']:.2f}"),
        ]
        baseline = work / "default.json"
        baseline.write_text(json.dumps(DQNConfig().to_dict()))
        request = CompareRequest(
            baseline=baseline,
            candidate=work / "study-a.json",
            episodes=args.test_episodes,
            training_seeds=args.training_seeds,
            steps=args.steps_per_trial,
            show_progress=False,
        )
        result = compare(request, Scenario.default(), RewardSettings())
        paired = result.report.paired["candidate"].difference
        rows += [
            ("(b) default DQNConfig, TEST return", _side(result.sides["baseline"])),
            ("(b) tuned config, TEST return", _side(result.sides["candidate"])),
            (
                f"(b) tuned - default, paired, {paired.n} TEST episodes",
                f"{paired.mean_diff:+.2f}  99% CI [{paired.ci.low:+.2f}, {paired.ci.high:+.2f}]",
            ),
        ]
        run_workers(1, "scale-1", args.scale_trials, pg=pg, args=args, work=work)
        run_workers(2, "scale-2", args.scale_trials, pg=pg, args=args, work=work)
        per_min_1, per_min_2 = trials_per_minute(pg, "scale-1"), trials_per_minute(pg, "scale-2")
        rows += [
            (
                f"(c) 1 worker, {args.scale_trials} trials, no pruning",
                f"{per_min_1:.2f} trials/min",
            ),
            (f"(c) 2 workers, same {args.scale_trials} trials", f"{per_min_2:.2f} trials/min"),
            ("(c) speed-up 2 vs 1 worker", f"{per_min_2 / per_min_1:.2f}x"),
        ]
    load_after = os.getloadavg()
    table = render(rows, args, load_before, load_after)
    print(table)
    if args.record:
        record(table)


def _side(side: Any) -> str:
    means = ", ".join(f"{value:.2f}" for value in side.per_model_mean_return)
    return f"mean per training seed: {means}"


def render(
    rows: list[tuple[str, str]],
    args: argparse.Namespace,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}); "
        f"load average before {_load(load_before)}, after {_load(load_after)}.",
        f"Budget: {args.steps_per_trial} env steps per trial, {args.evaluations} validation "
        f"scores of {args.validation_episodes} episodes each, median pruning; compare trains "
        f"each side with {args.training_seeds} training seeds and the same budget.",
        "",
        f"| {'measure'.ljust(width)} | result |",
        f"|{'-' * (width + 2)}|--------|",
    ]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def record(table: str) -> None:
    """Replace the body of the Tuning section only; other sections are other people's."""
    text = BENCH_FILE.read_text()
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    end = len(text) if end == -1 else end
    BENCH_FILE.write_text(text[:start] + "\n\n" + table + "\n" + text[end:])


if __name__ == "__main__":
    main()
