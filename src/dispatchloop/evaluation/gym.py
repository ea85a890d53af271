"""The generic Gymnasium path: random vs DQN model directories on any discrete env.

How the DQN is sanity-checked outside dispatch (e.g. CartPole-v1): the same
seeds for every policy, undiscounted episode returns, paired in the same
report as the simulator A/B. No guardrails here: a generic env has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from dispatchloop.evaluation.paired import FloatArray
from dispatchloop.evaluation.policies import EvaluationInputError, EvaluationRequest, load_q_network
from dispatchloop.evaluation.report import RETURN, EvaluationReport, PolicyRuns, build_report
from dispatchloop.progress import Progress, progress
from dispatchloop.rl.networks import FlatQNetwork, QNetwork

_LOG = logging.getLogger(__name__)

GymActor = Callable[[Any, "gym.Env[Any, Any]"], int]
"""Chooses an action from a raw Gym observation; gets the env for its action space."""


def random_gym_actor(seed: int) -> GymActor:
    """Uniform over the discrete actions, from its own seeded Generator."""
    rng = np.random.default_rng(seed)

    def act(_obs: Any, env: gym.Env[Any, Any]) -> int:
        return int(rng.integers(0, n_actions(env)))

    return act


def q_network_gym_actor(q_network: QNetwork) -> GymActor:
    """Greedy action of a flat Q-network; no exploration in evaluation."""
    q_network.eval()

    def act(obs: Any, env: gym.Env[Any, Any]) -> int:
        flat = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))
        mask = torch.ones(1, n_actions(env), dtype=torch.bool)
        with torch.no_grad():
            q = q_network.q_values({"obs": flat}, mask)
        return int(q.argmax(dim=1).item())

    return act


def n_actions(env: gym.Env[Any, Any]) -> int:
    space = env.action_space
    if not isinstance(space, gym.spaces.Discrete):
        raise EvaluationInputError(f"{env.spec.id if env.spec else env} is not a discrete env")
    return int(space.n)


def make_env(env_id: str) -> gym.Env[Any, Any]:
    """The env, or EvaluationInputError for an unknown id or a non-discrete action space."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as exc:
        raise EvaluationInputError(f"unknown Gymnasium environment {env_id!r}: {exc}") from exc
    if not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise EvaluationInputError(f"{env_id} does not have a discrete action space")
    return env


def run_gym(
    env_id: str,
    actors: Mapping[str, GymActor],
    seeds: Sequence[int],
    bar: Progress | None = None,
) -> PolicyRuns:
    """Undiscounted return of each actor on each seeded episode of `env_id`."""
    env = make_env(env_id)
    runs: dict[str, dict[str, FloatArray]] = {}
    try:
        for name, actor in actors.items():
            returns = np.empty(len(seeds), dtype=np.float64)
            for index, seed in enumerate(seeds):
                returns[index] = _episode_return(env, actor, seed)
                if bar is not None:
                    bar.update(1, policy=name)
            runs[name] = {RETURN: returns}
    finally:
        env.close()
    return runs


def _episode_return(env: gym.Env[Any, Any], actor: GymActor, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(actor(obs, env))
        total += float(reward)
        done = bool(terminated or truncated)
    return total


def model_gym_actor(model_dir: Path, env_id: str) -> GymActor:
    """The greedy actor of a model directory, refused unless it fits `env_id`'s spaces."""
    network = load_q_network(model_dir)
    if not isinstance(network, FlatQNetwork):
        raise EvaluationInputError(
            f"model {str(model_dir)!r} scores dispatch candidates; it cannot play {env_id}"
        )
    env = make_env(env_id)
    try:
        obs_dim = int(np.prod(env.observation_space.shape or (0,)))
        shape = (obs_dim, n_actions(env))
    finally:
        env.close()
    if (network.obs_dim, network.n_actions) != shape:
        raise EvaluationInputError(
            f"model {str(model_dir)!r} expects {network.obs_dim} inputs and "
            f"{network.n_actions} actions; {env_id} has {shape[0]} and {shape[1]}"
        )
    return q_network_gym_actor(network)


def evaluate_gym(
    request: EvaluationRequest, env_id: str, show_bar: bool | None = None
) -> EvaluationReport:
    """Random vs model directories on the same seeded episodes of `env_id`."""
    seeds = request.seeds
    actors = {
        spec.name: (
            model_gym_actor(spec.model_dir, env_id)
            if spec.model_dir is not None
            else random_gym_actor(request.seed)
        )
        for spec in request.policies
    }
    total = len(actors) * len(seeds)
    with progress(f"evaluate {env_id}", total, logger=_LOG, show_bar=show_bar) as bar:
        runs = run_gym(env_id, actors, seeds, bar)
    return build_report(
        runs,
        environment=env_id,
        seeds=seeds,
        baseline=request.baseline,
        rng=np.random.default_rng(request.seed),
    )
