"""Simulator throughput: DispatchEnv (one episode) vs VecDispatchEnv (NumPy batch).

Peers measured in the same run: gymnasium's CartPole-v1 (a reference point for
"one Python env step"), and gymnasium's SyncVectorEnv over DispatchEnv copies
(the naive way to vectorise). Actions are the first eligible driver, so the
figures are the env's cost, not a policy's. Also reported: the hindsight
planner's cost per episode (it replays many sequences; evaluation uses it).

    .venv/bin/python benchmarks/sim.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime

import gymnasium as gym
import numpy as np

from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import HindsightPolicy
from dispatchloop.sim.rollout import run_episodes, validation_seeds
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv


def timed(step: Callable[[], int], seconds: float) -> float:
    """Steps per second of `step` (which returns how many env steps it made)."""
    step()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def single_env(seconds: float) -> float:
    env = DispatchEnv(Scenario.default(), RewardSettings())
    state = {"obs": env.reset(seed=0)[0]}

    def step() -> int:
        obs, _, done, _, _ = env.step(int(state["obs"]["action_mask"].argmax()))
        state["obs"] = env.reset()[0] if done else obs
        return 1

    return timed(step, seconds)


def vector_env(num_envs: int, seconds: float) -> float:
    vec = VecDispatchEnv(Scenario.default(), RewardSettings(), num_envs)
    state = {"obs": vec.reset(range(num_envs))}

    def step() -> int:
        state["obs"] = vec.step(state["obs"]["action_mask"].argmax(axis=1))[0]
        return num_envs

    return timed(step, seconds)


def gym_sync_vector(num_envs: int, seconds: float) -> float:
    envs = gym.vector.SyncVectorEnv(
        [lambda: DispatchEnv(Scenario.default(), RewardSettings()) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    state = {"obs": envs.reset(seed=list(range(num_envs)))[0]}

    def step() -> int:
        state["obs"] = envs.step(state["obs"]["action_mask"].argmax(axis=1))[0]
        return num_envs

    return timed(step, seconds)


def cartpole(seconds: float) -> float:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)

    def step() -> int:
        _, _, terminated, truncated, _ = env.step(0)
        if terminated or truncated:
            env.reset()
        return 1

    return timed(step, seconds)


def events_per_second(seconds: float) -> tuple[float, float]:
    """simulated_events (env + schema-v1 dict + validation) vs the test factory event_stream."""
    from dispatchloop.sim.producer import resolve_policy, simulated_events
    from dispatchloop.testing.events import event_stream

    def rate(make: Callable[[int], int]) -> float:
        n, start = 200, time.perf_counter()
        done = 0
        while time.perf_counter() - start < seconds:
            done += make(n)
        return done / (time.perf_counter() - start)

    def simulated(n: int) -> int:
        policy = resolve_policy("greedy", 0)
        return sum(
            1 for _ in simulated_events(Scenario.default(), RewardSettings(), policy, n, seed=n)
        )

    def factory(n: int) -> int:
        return sum(1 for _ in event_stream(n, n))

    return rate(simulated), rate(factory)


def hindsight_ms_per_episode(episodes: int = 20) -> float:
    start = time.perf_counter()
    run_episodes(
        HindsightPolicy(), Scenario.default(), RewardSettings(), validation_seeds(episodes)
    )
    return (time.perf_counter() - start) / episodes * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Time per measurement.")
    args = parser.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  python {platform.python_version()}")
    print(f"numpy {np.__version__}  gymnasium {gym.__version__}  uptime: {load}")
    rows = [
        ("peer: CartPole-v1, 1 env (gymnasium)", cartpole(args.seconds)),
        ("DispatchEnv, 1 env", single_env(args.seconds)),
        ("peer: SyncVectorEnv of 8 DispatchEnv", gym_sync_vector(8, args.seconds)),
    ]
    rows += [(f"VecDispatchEnv, {n} envs", vector_env(n, args.seconds)) for n in (8, 64, 256, 1024)]
    print("\n| path | env steps/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    simulated, factory = events_per_second(args.seconds)
    print("\n| event source (no Kafka) | events/s |\n|---|---|")
    print(f"| simulated_events (greedy; env + event + validation) | {simulated:,.0f} |")
    print(f"| peer: testing.events.event_stream (random fields) | {factory:,.0f} |")
    print(f"\nhindsight planner: {hindsight_ms_per_episode():.1f} ms per 19-booking episode")


if __name__ == "__main__":
    main()
