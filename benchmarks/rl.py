"""RL speed: DQN gradient updates/s vs Stable-Baselines3, inference latency, env steps/s.

Measured in one run, on one torch thread (as training runs):
1. gradient updates/s on CartPole-shaped data, MLP 64x64, batch 64: our `Learner.update`
   (Double DQN, Huber, grad clipping, divergence check) vs SB3 `DQN.train` with the same
   network and batch (peer); plus our candidate network at the default dispatch size.
   `Learner.update` is what train_gym / train_dispatch / train_offline call; for our
   network kinds it runs the NumPy step (rl/numpy_learner.py). The PyTorch reference
   step (`Learner(..., torch_reference=True)`, autograd + torch Adam) is timed too,
   to show where the difference comes from;
2. single-decision latency p50/p99 of the default dispatch Q-network for 9 and 40
   candidates: PyTorch eager, ONNX Runtime, NumPy (the served `DQNPolicy` path);
3. DispatchEnv steps/s, single and vectorised, via benchmarks/sim.py.

    .venv/bin/python benchmarks/rl.py [--updates 3000] [--record]

`--record` rewrites the `## RL` section of benchmarks/BENCHMARKS.md with this run.

The machine is shared: wall-clock figures include time spent waiting for a core,
so updates/s are CPU time of this process (`time.process_time`, one torch
thread), and latencies are given both as wall time and as CPU time.

One OpenBLAS thread, like one torch thread: with OpenBLAS's default thread pool
a 40-candidate NumPy decision had a p99 of ~16 ms (idle BLAS threads spinning);
with one thread it is ~0.17 ms. Serving processes should set the same.
"""

from __future__ import annotations

import os

# Set before numpy is imported: OpenBLAS reads it when it loads (see the docstring).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib.util
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dispatchloop.decisions.featurizer import N_CANDIDATE_FEATURES, N_CONTEXT_FEATURES
from dispatchloop.rl.artifacts import export_onnx_model
from dispatchloop.rl.buffer import ReplayBuffer, Transitions
from dispatchloop.rl.dqn import Learner
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork, FlatQNetwork
from dispatchloop.rl.policy import DQNPolicy

HERE = Path(__file__).resolve().parent
SB3_LIKE = DQNConfig(hidden_size=64, n_layers=2, batch_size=64, dueling=False, double_q=True)


def _sim_bench():  # type: ignore[no-untyped-def]
    """benchmarks/sim.py as a module (the sim engineer's env benchmarks, not duplicated)."""
    spec = importlib.util.spec_from_file_location("sim_bench", HERE / "sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(step: Callable[[], None], n: int) -> float:
    for _ in range(min(100, n)):
        step()
    start = time.process_time()
    for _ in range(n):
        step()
    return n / (time.process_time() - start)


def ours_flat(updates: int, torch_reference: bool = False) -> float:
    rng = np.random.default_rng(0)
    k = 20_000
    buffer = ReplayBuffer({"obs": (4,)}, 2, k, rng)
    obs = rng.normal(size=(k, 4)).astype(np.float32)
    ones = np.ones((k, 2), np.bool_)
    buffer.add(
        Transitions(
            {"obs": obs}, ones, rng.integers(0, 2, k), np.ones(k, np.float32),
            {"obs": obs + 0.01}, ones, np.zeros(k, np.float32), np.full(k, 0.99, np.float32),
        )
    )  # fmt: skip
    network = FlatQNetwork.from_config(SB3_LIKE, 4, 2)
    learner = Learner(network, SB3_LIKE, torch_reference=torch_reference)
    assert learner.uses_numpy != torch_reference
    return _rate(lambda: learner.update(buffer.sample(64)) and None, updates)


def ours_candidate(updates: int, n: int = 9, torch_reference: bool = False) -> float:
    config = DQNConfig()
    rng = np.random.default_rng(0)
    k = 20_000
    buffer = ReplayBuffer(
        {"candidates": (n, N_CANDIDATE_FEATURES), "context": (N_CONTEXT_FEATURES,)}, n, k, rng
    )
    cands = rng.normal(size=(k, n, N_CANDIDATE_FEATURES)).astype(np.float32)
    ctx = rng.normal(size=(k, N_CONTEXT_FEATURES)).astype(np.float32)
    mask = rng.random((k, n)) < 0.8
    mask[:, 0] = True
    obs = {"candidates": cands, "context": ctx}
    buffer.add(
        Transitions(
            obs, mask, np.zeros(k, np.int64), -np.ones(k, np.float32), obs, mask,
            np.zeros(k, np.float32), np.full(k, 0.99**3, np.float32),
        )
    )  # fmt: skip
    network = CandidateQNetwork.from_config(config)
    learner = Learner(network, config, torch_reference=torch_reference)
    assert learner.uses_numpy != torch_reference
    return _rate(lambda: learner.update(buffer.sample(config.batch_size)) and None, updates)


def sb3_flat(updates: int) -> float:
    from stable_baselines3 import DQN

    model = DQN(
        "MlpPolicy",
        "CartPole-v1",
        policy_kwargs={"net_arch": [64, 64]},
        batch_size=64,
        learning_starts=5_000,
        buffer_size=20_000,
        seed=0,
        device="cpu",
    )
    model.learn(5_000)  # fills the buffer (no training before learning_starts)
    model.train(gradient_steps=100, batch_size=64)  # warm-up
    start = time.process_time()
    model.train(gradient_steps=updates, batch_size=64)
    return updates / (time.process_time() - start)


def _percentiles(call: Callable[[], object], n: int) -> tuple[float, float, float, float]:
    """(wall p50, wall p99, CPU p50, CPU p99) in µs."""
    for _ in range(200):
        call()
    wall, cpu = np.empty(n), np.empty(n)
    for i in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        cpu[i] = time.process_time() - start_cpu
        wall[i] = time.perf_counter() - start
    return tuple(float(np.percentile(t, q) * 1e6) for t in (wall, cpu) for q in (50, 99))  # type: ignore[return-value]


def latency(n: int, calls: int, onnx_path: Path, network: CandidateQNetwork) -> list[tuple]:
    rng = np.random.default_rng(n)
    cands = rng.normal(size=(1, n, N_CANDIDATE_FEATURES)).astype(np.float32)
    ctx = rng.normal(size=(1, N_CONTEXT_FEATURES)).astype(np.float32)
    mask = rng.random((1, n)) < 0.8
    mask[0, 0] = True
    tensors = (torch.from_numpy(cands), torch.from_numpy(ctx), torch.from_numpy(mask))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {"candidates": cands, "context": ctx, "mask": mask}
    policy = DQNPolicy(network)
    single = {"candidates": cands[0], "context": ctx[0], "action_mask": mask[0]}

    def torch_eager() -> int:
        with torch.inference_mode():
            return int(network(*tensors).argmax())

    return [
        (f"PyTorch eager, {n} candidates", *_percentiles(torch_eager, calls)),
        (
            f"ONNX Runtime, {n} candidates",
            *_percentiles(lambda: int(session.run(None, feeds)[0].argmax()), calls),
        ),
        (
            f"NumPy (DQNPolicy.act), {n} candidates",
            *_percentiles(lambda: policy.act(single), calls),
        ),
    ]


def load_average() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return out.strip().split("load average:")[-1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3_000, help="Gradient steps per timing.")
    parser.add_argument("--calls", type=int, default=5_000, help="Decisions per latency row.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Per env-steps measurement.")
    parser.add_argument("--record", action="store_true", help="Write BENCHMARKS.md ## RL.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{_cpus()} CPUs, python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}; load average at start: {load_average()}.",
        "",
    ]
    # Interleave ours and the peer (three rounds) so a load change hits all alike; each
    # figure is the best round, ratios are of best against best.
    ours, peer, reference = [], [], []
    for _ in range(3):
        ours.append(ours_flat(args.updates))
        peer.append(sb3_flat(args.updates))
        reference.append(ours_flat(args.updates, torch_reference=True))
    cand_updates = max(args.updates // 5, 100)
    cand, cand_reference = [], []
    for _ in range(2):
        cand.append(ours_candidate(cand_updates))
        cand_reference.append(ours_candidate(cand_updates, torch_reference=True))
    rounds = " / ".join(f"{o:,.0f} vs {p:,.0f}" for o, p in zip(ours, peer, strict=True))
    lines += [
        "| gradient updates per CPU second (1 torch thread, batch 64) | updates/s |",
        "|---|---|",
        f"| peer: Stable-Baselines3 DQN.train, MLP 64x64 | {max(peer):,.0f} |",
        f"| ours: Learner.update (NumPy step, Double DQN), MLP 64x64 | {max(ours):,.0f} |",
        f"| **ours / SB3** | **{max(ours) / max(peer):.2f}x** |",
        f"| ours, PyTorch reference step (autograd + Adam), MLP 64x64 | {max(reference):,.0f} |",
        f"| ours: CandidateQNetwork default (128x2, dueling), 9 candidates, NumPy step "
        f"| {max(cand):,.0f} |",
        f"| ours: same, PyTorch reference step | {max(cand_reference):,.0f} |",
        "",
        f"Rounds, ours vs SB3 (updates/s): {rounds}.",
        "",
        "| single decision, default network (128x2, dueling) "
        "| wall p50 µs | wall p99 µs | CPU p50 µs | CPU p99 µs |",
        "|---|---|---|---|---|",
    ]
    network = CandidateQNetwork.from_config(DQNConfig()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx_model(network, onnx_path)
        for n in (9, 40):
            for name, *figures in latency(n, args.calls, onnx_path, network):
                lines.append(f"| {name} | " + " | ".join(f"{f:.1f}" for f in figures) + " |")
    sim = _sim_bench()
    lines += [
        "",
        "| DispatchEnv (via benchmarks/sim.py) | env steps/s |",
        "|---|---|",
        f"| DispatchEnv, 1 env | {sim.single_env(args.seconds):,.0f} |",
        f"| VecDispatchEnv, 8 envs (training default) | {sim.vector_env(8, args.seconds):,.0f} |",
        f"| VecDispatchEnv, 64 envs | {sim.vector_env(64, args.seconds):,.0f} |",
        "",
        f"Load average at end: {load_average()}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(text)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def record(text: str) -> None:
    path = HERE / "BENCHMARKS.md"
    content = path.read_text()
    pattern = re.compile(r"(## RL \(`benchmarks/rl.py`\)\n)(.*?)(?=\n## |\Z)", re.S)
    if not pattern.search(content):
        raise SystemExit("BENCHMARKS.md has no '## RL (`benchmarks/rl.py`)' section")
    path.write_text(pattern.sub(lambda m: m.group(1) + "\n" + text + "\n", content, count=1))


if __name__ == "__main__":
    main()
