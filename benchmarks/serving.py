"""Serving latency and throughput: `dispatchloop serve` vs a FastAPI + ONNX Runtime peer.

One run measures, on the same model and the same 40-candidate requests:
- **limit**: a bare ONNX Runtime call on pre-computed features (no HTTP, no JSON,
  no featurizer), and the same plus the featurizer, in this process;
- **serve**: `dispatchloop serve --no-follow` (seeded from a scratch registry);
- **peer**: `benchmarks/serving_peer.py` (FastAPI parses `DecideRequest`, same
  featurizer, ONNX Runtime), its `async def` route and its thread-pool route.
Each HTTP target gets wrk (Debian's `wrk`) twice: paced near 500 decisions/s
(`--rate`) for p50/p99, and unpaced (16 connections) for the maximum throughput;
the server's CPU time per decision is read from /proc. Paced: 20 connections,
each pausing an exponential time of mean 20/rate minus 1 ms after an answer
(seeded), so requests arrive near-Poisson, as independent bookings do. (Until
2026-12-02 the pause was fixed: the connections then stayed in phase and sent
bursts of 20 every 40 ms, which alone put serve's /healthz at p50 1.0 ms.)
The **HTTP floor** row is serve's own `GET /healthz` at the same pacing: the
stack and the load generator without a decision, the least any route can take.
Targets run one after another, interleaved over `--rounds`; the medians are kept.

    .venv/bin/python benchmarks/serving.py [--seconds 10] [--rounds 2]

Prints a Markdown table and the load average (copy both into BENCHMARKS.md).
Needs `wrk` (apt-get install wrk) and the bench extra (fastapi).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from dispatchloop.decisions.featurizer import demand_map, featurize, situation_from_decision
from dispatchloop.events import DecideRequest, DispatchOutcomeEvent, parse_outcome
from dispatchloop.registry import open_registry
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft, read_card
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, LoggingPolicy
from dispatchloop.sim.producer import simulated_events
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.broker import free_port

HERE = Path(__file__).resolve().parent
SERVER_CPUS, LOAD_CPUS = {0}, {1}
"""--pin: where the servers run, and where wrk and this script run."""
N_DRIVERS = 40
WRK_SCRIPT = """
local bodies, i = {}, 0
local method = os.getenv("METHOD") or "POST"
if method == "POST" then
  for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
end
local path = os.getenv("TARGET_PATH")
local mean_pause = tonumber(os.getenv("PAUSE_MS") or "0")
wrk.method = method
wrk.headers["Content-Type"] = "application/json"
request = function()
  if method ~= "POST" then return wrk.format(nil, path) end
  i = i % #bodies + 1
  return wrk.format(nil, path, nil, bodies[i])
end
-- Paced: each connection waits an exponential time (seeded) after an answer, so the
-- connections' requests arrive as independent bookings do (near-Poisson), not in phase.
math.randomseed(tonumber(os.getenv("SEED") or "7"))
if mean_pause > 0 then
  delay = function() return math.floor(-math.log(1 - math.random()) * mean_pause + 0.5) end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.stderr:write(string.format(
    '{"requests": %d, "seconds": %.3f, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
    .. '"p999_us": %d, "errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def make_model(root: Path) -> Path:
    """A real candidate scorer of the size training uses (128 × 2), registered as champion."""
    torch.manual_seed(0)
    config = DQNConfig()
    network = CandidateQNetwork(config.hidden_size, config.n_layers)
    draft = CardDraft(trainer="dqn", scenario=Scenario.default().to_dict())
    save_model(root / "model", network, config, draft, export_onnx=True)
    registry = open_registry(f"sqlite:///{root / 'replay.db'}", root / "registry")
    version = registry.register(root / "model", actor="bench").version
    registry.promote(version, actor="bench", reason="benchmark", force=True)
    directory = registry.get(version).directory
    registry.close()
    return directory


def make_requests(n: int) -> list[DecideRequest]:
    scenario = dataclasses.replace(Scenario.default(), n_drivers=N_DRIVERS)
    policy = LoggingPolicy(GreedyPolicy(), "greedy")
    out = []
    for raw in simulated_events(scenario, RewardSettings(), policy, n, seed=11):
        event = parse_outcome(json.dumps(raw).encode(), 1 << 20)
        assert isinstance(event, DispatchOutcomeEvent)
        out.append(
            DecideRequest(
                decided_at=event.decided_at, booking=event.booking, candidates=event.candidates
            )
        )
    return out


def bare_limits(model_dir: Path, requests: list[DecideRequest]) -> dict[str, dict[str, float]]:
    """ONNX Runtime alone (features pre-computed), and with the featurizer, per call."""
    card = read_card(model_dir)
    demand = demand_map(card.scenario["pickup_points"])  # type: ignore[index,arg-type]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / str(card.onnx_file)), options)
    features = [
        featurize(situation_from_decision(r.decided_at, r.booking, r.candidates), demand)
        for r in requests
    ]

    def run(f: Any) -> Any:
        return session.run(
            ["q_values"],
            {"candidates": f.candidates[None], "context": f.context[None], "mask": f.mask[None]},
        )

    def with_featurizer(r: DecideRequest) -> Any:
        return run(
            featurize(situation_from_decision(r.decided_at, r.booking, r.candidates), demand)
        )

    out = {}
    for name, call, inputs in (
        ("ONNX Runtime call alone [limit]", run, features),
        ("featurizer + ONNX Runtime call", with_featurizer, requests),
    ):
        times = []
        cpu_started = time.process_time()
        for k in range(3_000):
            item = inputs[k % len(inputs)]
            began = time.perf_counter()
            call(item)
            times.append(time.perf_counter() - began)
        cpu_us = 1e6 * (time.process_time() - cpu_started) / len(times)
        micros = np.array(times[200:]) * 1e6
        out[name] = {
            "p50_us": float(np.percentile(micros, 50)),
            "p99_us": float(np.percentile(micros, 99)),
            "max_rps": 1e6 / float(micros.mean()),
            "cpu_us": cpu_us,
        }
    return out


def start(
    command: list[str], env: dict[str, str], port: int, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server and wait for its /healthz; `cpus`: the only CPUs it may run on."""
    if cpus:  # taskset (util-linux) sets it before the server starts any thread
        command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                message = process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                raise RuntimeError(message) from None
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{command} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    server: subprocess.Popen[bytes],
    port: int,
    path: str,
    files: tuple[Path, Path],
    *,
    seconds: float,
    rate: float | None,
    method: str = "POST",
) -> dict[str, Any]:
    """One wrk measurement; `files` are the request bodies and the Lua script. The
    server's CPU time per decision is also taken: on a shared machine it moves less
    than wall-clock rates do."""
    bodies, script = files
    cpu_before = cpu_seconds(server.pid)
    connections = 20 if rate else 16  # paced: each connection waits ~40 ms after an answer
    env = {**os.environ, "BODIES": str(bodies), "TARGET_PATH": path, "METHOD": method}
    if rate:
        env["PAUSE_MS"] = str(max(1, round(1000 * connections / rate - 1)))
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(result.stderr.strip().splitlines()[-1])
    figures["rps"] = figures["requests"] / figures["seconds"]
    figures["cpu_us"] = 1e6 * (cpu_seconds(server.pid) - cpu_before) / max(figures["requests"], 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers on CPU 0, wrk (and this script) on CPU 1: the load generator "
        "does not share the server's core, as when the sidecar has a core of its own",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    load_before = os.getloadavg()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = make_model(root)
        requests = make_requests(400)
        bodies = root / "bodies.jsonl"
        bodies.write_text("".join(r.model_dump_json() + "\n" for r in requests))
        script = root / "decide.lua"
        script.write_text(WRK_SCRIPT)
        limits = bare_limits(model_dir, requests)
        ports = {"serve": free_port(), "peer": free_port()}
        env = {
            **os.environ,
            "DISPATCHLOOP_DATA_DIR": str(root),
            "DISPATCHLOOP_STORE_URL": f"sqlite:///{root / 'replay.db'}",
            "DISPATCHLOOP_LOG_LEVEL": "WARNING",
        }
        servers: dict[str, subprocess.Popen[bytes]] = {}
        commands = {
            "serve": [sys.executable, "-m", "dispatchloop.cli", "serve", "--no-follow",
                      "--port", str(ports["serve"])],
            "peer": [sys.executable, str(HERE / "serving_peer.py"), str(model_dir),
                     str(ports["peer"])],
        }  # fmt: skip
        targets = {
            "dispatchloop serve (Starlette + uvicorn, NumPy scorer)": ("serve", "/v1/decide"),
            "FastAPI + ONNX Runtime, async def [peer]": ("peer", "/v1/decide"),
            "FastAPI + ONNX Runtime, def (thread pool)": ("peer", "/v1/decide-threadpool"),
        }
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            t: {"paced": [], "max": []} for t in targets
        }
        floor: list[dict[str, Any]] = []
        try:
            for server, command in commands.items():
                servers[server] = start(
                    command, env, ports[server], SERVER_CPUS if args.pin else None
                )
            if args.pin:
                os.sched_setaffinity(0, LOAD_CPUS)  # wrk inherits it
            for server, path in targets.values():  # warm-up
                wrk(servers[server], ports[server], path, (bodies, script), seconds=2, rate=None)
            for _ in range(args.rounds):
                floor.append(
                    wrk(
                        servers["serve"],
                        ports["serve"],
                        "/healthz",
                        (bodies, script),
                        seconds=args.seconds,
                        rate=args.rate,
                        method="GET",
                    )
                )
                for kind, rate in (("paced", args.rate), ("max", None)):
                    for name, (server, path) in targets.items():
                        runs[name][kind].append(
                            wrk(
                                servers[server],
                                ports[server],
                                path,
                                (bodies, script),
                                seconds=args.seconds,
                                rate=rate,
                            )
                        )
        finally:
            for process in servers.values():
                stop(process)
    load_after = os.getloadavg()
    report(limits, runs, floor, started=started, load=(load_before[0], load_after[0]), args=args)


def _median(values: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(v[key] for v in values))


def report(
    limits: dict[str, dict[str, float]],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
    floor: list[dict[str, Any]],
    *,
    started: datetime,
    load: tuple[float, float],
    args: argparse.Namespace,
) -> None:
    """The Markdown table for BENCHMARKS.md; `load` is the 1-min load average before, after."""
    load_before, load_after = load
    peer = _median(runs["FastAPI + ONNX Runtime, async def [peer]"]["max"], "rps")
    print(f"Run {started:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, onnxruntime {ort.__version__}; load average "
          f"{load_before:.2f} before, {load_after:.2f} after; {N_DRIVERS} candidates, "
          f"wrk {args.seconds:g} s per measurement, median of {args.rounds} rounds; "
          + ("servers pinned to CPU 0, wrk to CPU 1" if args.pin else "nothing pinned")
          + ".\n")  # fmt: skip
    peer_cpu = _median(runs["FastAPI + ONNX Runtime, async def [peer]"]["max"], "cpu_us")
    print(f"| target | decisions/s paced (goal {args.rate:g}) | p50 ms | p99 ms | errors | "
          "max decisions/s | ratio to peer | server CPU µs/decision | peer CPU ÷ this |"
          )  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, figures in limits.items():
        print(f"| {name} (in process) | – | {figures['p50_us'] / 1e3:.3f} | "
              f"{figures['p99_us'] / 1e3:.3f} | – | {figures['max_rps']:,.0f} | – | "
              f"{figures['cpu_us']:.0f} | – |")  # fmt: skip
    floor_errors = sum(r["errors"] + r["non_2xx"] for r in floor)
    print(f"| HTTP floor: serve's GET /healthz, no decision (same stack, same pacing) | "
          f"{_median(floor, 'rps'):,.0f} | {_median(floor, 'p50_us') / 1e3:.3f} | "
          f"{_median(floor, 'p99_us') / 1e3:.3f} | {floor_errors} "
          f"| – | – | {_median(floor, 'cpu_us'):.0f} | – |")  # fmt: skip
    for name, kinds in runs.items():
        paced, maximum = kinds["paced"], kinds["max"]
        errors = sum(r["errors"] + r["non_2xx"] for r in paced + maximum)
        rps, cpu = _median(maximum, "rps"), _median(maximum, "cpu_us")
        print(f"| {name} | {_median(paced, 'rps'):,.0f} | {_median(paced, 'p50_us') / 1e3:.3f} | "
              f"{_median(paced, 'p99_us') / 1e3:.3f} | {errors} | {rps:,.0f} | "
              f"{rps / peer:.2f} | {cpu:.0f} | {peer_cpu / cpu:.2f} |")  # fmt: skip
    print("\nraw:", json.dumps({"limits": limits, "floor": floor, "runs": runs}))


if __name__ == "__main__":
    main()
