"""DQN for dispatch, all in one place: Double DQN, dueling, n-step, masks, CQL offline.

Read it top to bottom like CleanRL's dqn.py:

1. `dqn_loss` — the TD target and loss: r + gamma**n * Q_target(s', argmax_a' Q(s', a'))
   over *eligible* a' only (masked max), Huber loss, plus the conservative (CQL)
   penalty `logsumexp_eligible Q(s, .) - Q(s, a_logged)` when training from logs.
   This PyTorch version is the reference definition.
2. `Learner.update` — one gradient step: loss, backward, clip by global norm,
   divergence check, Adam, target update (hard copy when tau == 1, else Polyak).
   For our two network kinds the step runs as hand-written NumPy (rl/numpy_learner.py,
   the same arithmetic, tested against autograd + torch Adam): for networks this
   small PyTorch's per-op overhead, not arithmetic, is the cost.
3. `_train_online` — epsilon-greedy over eligible actions in a vector env
   (linear epsilon schedule), n-step transitions into the replay buffer,
   `gradient_steps` updates every `train_frequency` env steps after
   `learning_starts`, callbacks after every vector step.
4. Entry points: `train_dispatch` (simulator), `train_offline` (logged data),
   `train_gym` (any Gymnasium env with Box observations and Discrete actions).

Divergence — a NaN/inf loss, gradient or Q-value, or |Q| beyond
`Q_DIVERGENCE_LIMIT` — raises `TrainingDivergedError`; such a network is never
returned, so it can never be saved or promoted.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from dispatchloop.rl.buffer import (
    ArrayObs,
    NStepAccumulator,
    ReplayBatch,
    ReplayBuffer,
    Transitions,
)
from dispatchloop.rl.callbacks import TrainingCallback, TrainingContext
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork, FlatQNetwork, QNetwork
from dispatchloop.rl.numpy_learner import (
    NumpyDQNStep,
    NumpyQFunction,
    StepStats,
    numpy_q_function,
)
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

if TYPE_CHECKING:
    from dispatchloop.rl.logged import LoggedDataset

logger = logging.getLogger(__name__)

Q_DIVERGENCE_LIMIT = 1.0e6
"""|Q| beyond this is divergence: rewards are bounded per step (a dispatch step costs at
most a few hundred, CartPole pays 1), so with gamma < 1 sane Q-values stay far below it."""


class TrainingDivergedError(RuntimeError):
    """Training produced NaN/inf or exploding values; the network must not be used."""


class TrainResult(NamedTuple):
    q_network: QNetwork
    env_steps: int
    gradient_steps: int
    final_loss: float
    wall_seconds: float


# --- 1. the loss -------------------------------------------------------------------------


@torch.no_grad()
def td_targets(
    q_network: QNetwork,
    target_network: QNetwork,
    batch: ReplayBatch,
    double_q: bool,
    next_online: torch.Tensor | None = None,
) -> torch.Tensor:
    """r + gamma**k * (1 - done) * Q_target(s', a*), a* the best *eligible* action in s'.

    `next_online` (the online network's masked Q of s') may be passed in when the
    caller already computed it.
    """
    next_target = target_network.q_values(batch.next_observations, batch.next_masks)
    if double_q:  # online network picks a', target network scores it
        if next_online is None:
            next_online = q_network.q_values(batch.next_observations, batch.next_masks)
        next_action = next_online.argmax(dim=1, keepdim=True)
        next_q = next_target.gather(1, next_action).squeeze(1)
    else:
        next_q = next_target.max(dim=1).values
    # A bootstrap state where nothing is eligible has no value to bootstrap from.
    next_q = torch.where(batch.next_masks.any(dim=1), next_q, torch.zeros_like(next_q))
    return batch.rewards + batch.discounts * (1.0 - batch.dones) * next_q


def dqn_loss(
    q_network: QNetwork,
    target_network: QNetwork,
    batch: ReplayBatch,
    double_q: bool,
    cql_alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber TD loss (+ CQL penalty); returns (loss, Q of the taken actions)."""
    next_online = None
    if double_q:
        # One online forward pass over s and s' together: half the per-op overhead, which
        # dominates for these small networks. Only the s half feeds gradients.
        size = batch.actions.shape[0]
        both = {
            k: torch.cat([v, batch.next_observations[k]]) for k, v in batch.observations.items()
        }
        q_both = q_network.q_values(both, torch.cat([batch.masks, batch.next_masks]))
        q_all, next_online = q_both[:size], q_both[size:].detach()
    else:
        q_all = q_network.q_values(batch.observations, batch.masks)
    q_taken = q_all.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    target = td_targets(q_network, target_network, batch, double_q, next_online)
    loss = torch.nn.functional.smooth_l1_loss(q_taken, target)
    if cql_alpha > 0.0:  # push down Q of actions the logs never took, up the logged one
        penalty = torch.logsumexp(q_all, dim=1) - q_taken  # masked entries add exp(-1e9) = 0
        loss = loss + cql_alpha * penalty.mean()
    return loss, q_taken


# --- 2. one gradient step ----------------------------------------------------------------


class _TorchStep:
    """The reference step with autograd and torch.optim.Adam, for network kinds without a
    NumPy twin (and as the oracle the NumPy step is tested against)."""

    def __init__(self, learner: Learner) -> None:
        self.learner = learner
        # fused: one kernel updates every parameter (measurably faster for small nets on CPU).
        self.optimizer = torch.optim.Adam(
            learner.q_network.parameters(), lr=learner.config.learning_rate, fused=True
        )

    def compute(self, batch: Transitions, cql_alpha: float) -> StepStats:
        learner = self.learner
        loss, q_taken = dqn_loss(
            learner.q_network,
            learner.target_network,
            ReplayBatch.from_arrays(batch),
            learner.config.double_q,
            cql_alpha,
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            learner.q_network.parameters(), learner.config.max_grad_norm, foreach=True
        )
        loss_value, q_max, norm = torch.stack(
            [loss.detach(), q_taken.detach().abs().max(), grad_norm]
        ).tolist()
        return StepStats(loss_value, q_max, norm)

    def apply(self) -> None:
        self.optimizer.step()

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        target_network, q_network = self.learner.target_network, self.learner.q_network
        if tau >= 1.0:
            target_network.load_state_dict(q_network.state_dict())
            return
        for target, online in zip(target_network.parameters(), q_network.parameters(), strict=True):
            target.lerp_(online, tau)


class Learner:
    """Online network, target network and optimiser; `update` is one gradient step.

    For `FlatQNetwork` and `CandidateQNetwork` (everything training builds) the step
    runs in NumPy (rl/numpy_learner.py: several times faster for these small
    networks, same arithmetic as `dqn_loss` + autograd + Adam, tested to agree); the
    torch module's parameters then *are* views of the NumPy weights, so callbacks,
    checkpoints and the returned network always see the current weights. Any other
    QNetwork kind trains with the PyTorch reference step above; `torch_reference=True`
    forces that step (tests compare the two).
    """

    def __init__(
        self, q_network: QNetwork, config: DQNConfig, *, torch_reference: bool = False
    ) -> None:
        self.config = config
        self.q_network = q_network
        self.target_network = copy.deepcopy(q_network)
        self.target_network.requires_grad_(False)
        self.gradient_steps = 0
        self._step: NumpyDQNStep | _TorchStep
        online = None if torch_reference else numpy_q_function(q_network)
        target = numpy_q_function(self.target_network) if online is not None else None
        if online is not None and target is not None:
            self._step = NumpyDQNStep(
                online, target, config.learning_rate, config.max_grad_norm, config.double_q
            )
        else:
            self._step = _TorchStep(self)

    @property
    def uses_numpy(self) -> bool:
        """True when the step runs in NumPy (the network kind has a NumPy twin)."""
        return isinstance(self._step, NumpyDQNStep)

    @property
    def actor(self) -> QNetwork | NumpyQFunction:
        """What acting should score with: the NumPy twin when there is one (same weights)."""
        return self._step.online if isinstance(self._step, NumpyDQNStep) else self.q_network

    def update(self, batch: Transitions, cql_alpha: float = 0.0) -> float:
        """One step of Adam on the DQN loss; raises TrainingDivergedError on NaN/inf."""
        stats = self._step.compute(batch, cql_alpha)  # gradient clipped, weights untouched
        self._check_finite(stats.loss, stats.q_abs_max, stats.grad_norm)
        self._step.apply()
        self.gradient_steps += 1
        if self.gradient_steps % self.config.target_update_interval == 0:
            self.update_target()
        return float(stats.loss)

    def _check_finite(self, loss: float, q_max: float, grad_norm: float) -> None:
        step = self.gradient_steps + 1
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training diverged at gradient step {step}: the loss is {loss} "
                f"(check the learning rate ({self.config.learning_rate:g}) and the rewards)"
            )
        if not math.isfinite(q_max) or q_max > Q_DIVERGENCE_LIMIT:
            raise TrainingDivergedError(
                f"training diverged at gradient step {step}: |Q| reached {q_max:.3g} "
                f"(limit {Q_DIVERGENCE_LIMIT:g}; learning rate {self.config.learning_rate:g})"
            )
        if not math.isfinite(grad_norm):
            raise TrainingDivergedError(
                f"training diverged at gradient step {step}: the gradient norm is {grad_norm}"
            )

    def update_target(self) -> None:
        """Hard copy when tau == 1, else Polyak: target <- (1 - tau) target + tau online."""
        self._step.update_target(self.config.tau)


# --- 3. online training --------------------------------------------------------------------


class VecStep(NamedTuple):
    """One step of every env, with same-step autoreset already applied."""

    observations: dict[str, NDArray[np.float32]]  # where each env now is (after any reset)
    masks: NDArray[np.bool_]
    rewards: NDArray[np.float64]
    terminated: NDArray[np.bool_]
    episode_over: NDArray[np.bool_]  # terminated or truncated
    final_observations: dict[str, NDArray[np.float32]]  # s' of the transition just taken
    final_masks: NDArray[np.bool_]


class VecEnvAdapter(Protocol):
    """What the online loop needs from a batch of environments."""

    num_envs: int
    n_actions: int
    obs_shapes: dict[str, tuple[int, ...]]

    def reset(self, seed: int) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.bool_]]: ...

    def step(self, actions: NDArray[np.int64]) -> VecStep: ...


def linear_epsilon(config: DQNConfig, step: int, total_steps: int) -> float:
    """Falls linearly from initial to final over exploration_fraction of the steps."""
    duration = max(config.exploration_fraction * total_steps, 1.0)
    progress = min(step / duration, 1.0)
    start, end = config.exploration_initial_eps, config.exploration_final_eps
    return start + progress * (end - start)


def select_actions(
    q_network: QNetwork | NumpyQFunction,
    observations: ArrayObs,
    masks: NDArray[np.bool_],
    epsilon: float,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Epsilon-greedy over eligible actions only: exploring picks uniformly among them."""
    if isinstance(q_network, NumpyQFunction):
        q = q_network.q_values(observations, masks)
    else:
        with torch.no_grad():
            tensors = {k: torch.from_numpy(v) for k, v in observations.items()}
            q = q_network.q_values(tensors, torch.from_numpy(masks)).numpy()
    greedy = np.where(masks, q, -np.inf).argmax(axis=1)
    random_scores = np.where(masks, rng.random(masks.shape), -np.inf)
    explore = rng.random(len(masks)) < epsilon
    chosen = np.where(explore, random_scores.argmax(axis=1), greedy)
    return np.asarray(chosen, dtype=np.int64)


def _train_online(
    *,
    config: DQNConfig,
    env: VecEnvAdapter,
    q_network: QNetwork,
    total_steps: int,
    seed: int,
    callbacks: Sequence[TrainingCallback],
) -> TrainResult:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    learner = Learner(q_network, config)
    buffer = ReplayBuffer(env.obs_shapes, env.n_actions, config.buffer_size, rng)
    nstep = NStepAccumulator(config.n_step, config.gamma, env.num_envs)
    ctx = TrainingContext(config, q_network, total_steps, online=True)
    for callback in callbacks:
        callback.on_training_start(ctx)
    observations, masks = env.reset(seed)
    while ctx.env_steps < total_steps:
        epsilon = linear_epsilon(config, ctx.env_steps, total_steps)
        actions = select_actions(learner.actor, observations, masks, epsilon, rng)
        step = env.step(actions)
        ready = nstep.push(
            observations,
            masks,
            actions,
            step.rewards,
            next_observations=step.final_observations,
            next_masks=step.final_masks,
            terminated=step.terminated,
            episode_over=step.episode_over,
        )
        if ready is not None:
            buffer.add(ready)
        observations, masks = step.observations, step.masks
        previous, ctx.env_steps = ctx.env_steps, ctx.env_steps + env.num_envs
        ctx.episodes += int(step.episode_over.sum())
        if ctx.env_steps >= config.learning_starts and len(buffer) > 0:
            trainings = ctx.env_steps // config.train_frequency - previous // config.train_frequency
            for _ in range(trainings * config.gradient_steps):
                ctx.last_loss = learner.update(buffer.sample(config.batch_size))
            ctx.gradient_steps = learner.gradient_steps
        if not all([callback.on_step(ctx) for callback in callbacks]):
            logger.info("training stopped early by a callback at %d env steps", ctx.env_steps)
            break
    for callback in callbacks:
        callback.on_training_end(ctx)
    wall = time.perf_counter() - started
    return TrainResult(q_network, ctx.env_steps, learner.gradient_steps, ctx.last_loss, wall)


# --- 4. entry points ---------------------------------------------------------------------


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One torch thread and one BLAS thread while training.

    These networks are far too small to split across cores, and on a shared
    machine idle BLAS threads spin: with OpenBLAS's default two threads the NumPy
    step of a 256x2 network ran ~10x slower under load (40 vs 380 updates/s).
    The torch setting stays (as before); the BLAS limit is undone on exit.
    """
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class GymVecAdapter:
    """N copies of a Gymnasium env (Box obs, Discrete actions) with same-step autoreset.

    Unlike gymnasium's vector envs it returns the true final observation of an
    ended episode, so a truncated episode (CartPole's 500-step limit) still
    bootstraps correctly.
    """

    def __init__(self, env_id: str, num_envs: int) -> None:
        self.envs = [gym.make(env_id) for _ in range(num_envs)]
        space, actions = self.envs[0].observation_space, self.envs[0].action_space
        if not isinstance(space, gym.spaces.Box) or not isinstance(actions, gym.spaces.Discrete):
            raise ValueError(f"{env_id} needs a Box observation and Discrete action space")
        self.num_envs = num_envs
        self.n_actions = int(actions.n)
        self.obs_shapes: dict[str, tuple[int, ...]] = {"obs": (int(np.prod(space.shape)),)}
        self._all = np.ones((num_envs, self.n_actions), np.bool_)

    def reset(self, seed: int) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.bool_]]:
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)]
        for i, env in enumerate(self.envs):
            env.action_space.seed(seed + i)
        return {"obs": self._flat(obs)}, self._all.copy()

    def step(self, actions: NDArray[np.int64]) -> VecStep:
        now, final, rewards = [], [], np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, np.bool_)
        over = np.zeros(self.num_envs, np.bool_)
        for i, env in enumerate(self.envs):
            obs, reward, term, trunc, _ = env.step(int(actions[i]))
            rewards[i], terminated[i], over[i] = float(reward), term, term or trunc
            final.append(obs)
            now.append(env.reset()[0] if over[i] else obs)
        flat_final = {"obs": self._flat(final)}
        return VecStep(
            {"obs": self._flat(now)}, self._all.copy(), rewards, terminated, over,
            flat_final, self._all.copy(),
        )  # fmt: skip

    def _flat(self, obs: list[Any]) -> NDArray[np.float32]:
        return np.asarray(obs, dtype=np.float32).reshape(self.num_envs, -1)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def evaluate_gym_policy(policy: DQNPolicy, env_id: str, episodes: int, seed: int) -> float:
    """Mean undiscounted return of the greedy policy over `episodes` seeded episodes."""
    env = gym.make(env_id)
    n_actions = int(env.action_space.n)  # type: ignore[attr-defined]
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, over = 0.0, False
        while not over:
            flat = np.asarray(obs, np.float32).reshape(-1)
            action = policy.act({"obs": flat, "action_mask": np.ones(n_actions, np.bool_)})
            obs, reward, terminated, truncated, _ = env.step(action)
            total, over = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def train_gym(  # noqa: PLR0917 - the shared RL interface fixes this signature
    config: DQNConfig,
    env_id: str,
    total_steps: int,
    seed: int,
    callbacks: Sequence[TrainingCallback] = (),
    num_envs: int = 1,
) -> TrainResult:
    """DQN on any Gymnasium env with Box observations and Discrete actions (e.g. CartPole-v1)."""
    env = GymVecAdapter(env_id, num_envs)
    try:
        with single_threaded():
            torch.manual_seed(seed)
            network = FlatQNetwork.from_config(config, env.obs_shapes["obs"][0], env.n_actions)
            return _train_online(
                config=config,
                env=env,
                q_network=network,
                total_steps=total_steps,
                seed=seed,
                callbacks=callbacks,
            )
    finally:
        env.close()


class DispatchVecAdapter:
    """The simulator's VecDispatchEnv seen through the online loop's interface."""

    def __init__(
        self,
        scenario: Scenario,
        reward: RewardSettings,
        num_envs: int,
        max_candidates: int | None = None,
    ) -> None:
        self.env = VecDispatchEnv(scenario, reward, num_envs, max_candidates=max_candidates)
        self.num_envs = num_envs
        n = max_candidates if max_candidates is not None else scenario.n_drivers
        self.n_actions = int(n)
        space = self.env.single_observation_space
        self.obs_shapes: dict[str, tuple[int, ...]] = {
            key: tuple(space[key].shape or ()) for key in ("candidates", "context")
        }

    def _split(
        self, obs: dict[str, NDArray[Any]]
    ) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.bool_]]:
        arrays = {
            "candidates": np.asarray(obs["candidates"], np.float32),
            "context": np.asarray(obs["context"], np.float32),
        }
        return arrays, np.asarray(obs["action_mask"]).astype(np.bool_)

    def reset(self, seed: int) -> tuple[dict[str, NDArray[np.float32]], NDArray[np.bool_]]:
        return self._split(self.env.reset([seed + i for i in range(self.num_envs)]))

    def step(self, actions: NDArray[np.int64]) -> VecStep:
        obs, rewards, terminated, _ = self.env.step(actions)
        arrays, masks = self._split(obs)
        done = np.asarray(terminated, np.bool_)
        # Same-step autoreset: obs of a terminated env is its next episode's first state;
        # that transition is terminal (done masks the bootstrap), so it is a fine s'.
        return VecStep(arrays, masks, np.asarray(rewards, np.float64), done, done, arrays, masks)


def train_dispatch(  # noqa: PLR0917 - the shared RL interface fixes this signature
    config: DQNConfig,
    scenario: Scenario,
    reward: RewardSettings,
    total_steps: int,
    seed: int,
    callbacks: Sequence[TrainingCallback] = (),
    num_envs: int = 8,
    init_from: QNetwork | None = None,
) -> TrainResult:
    """Online DQN in the vectorised simulator; `init_from` fine-tunes a (pre-trained) network."""
    if init_from is not None and not isinstance(init_from, CandidateQNetwork):
        raise ValueError("init_from must be a CandidateQNetwork for dispatch training")
    with single_threaded():
        env = DispatchVecAdapter(scenario, reward, num_envs)
        torch.manual_seed(seed)
        network: QNetwork = (
            copy.deepcopy(init_from) if init_from else CandidateQNetwork.from_config(config)
        )
        return _train_online(
            config=config,
            env=env,
            q_network=network,
            total_steps=total_steps,
            seed=seed,
            callbacks=callbacks,
        )


def train_offline(  # noqa: PLR0917 - the shared RL interface fixes this signature
    config: DQNConfig,
    dataset: LoggedDataset,
    gradient_steps: int,
    seed: int,
    callbacks: Sequence[TrainingCallback] = (),
    init_from: QNetwork | None = None,
) -> TrainResult:
    """Conservative DQN (CQL penalty weighted by cql_alpha) on logged one-step transitions."""
    with single_threaded():
        return _train_offline(
            config=config,
            dataset=dataset,
            gradient_steps=gradient_steps,
            seed=seed,
            callbacks=callbacks,
            init_from=init_from,
        )


def _train_offline(
    *,
    config: DQNConfig,
    dataset: LoggedDataset,
    gradient_steps: int,
    seed: int,
    callbacks: Sequence[TrainingCallback],
    init_from: QNetwork | None,
) -> TrainResult:
    started = time.perf_counter()
    if len(dataset) == 0:
        raise ValueError("the logged dataset is empty: nothing to train on")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    network = copy.deepcopy(init_from) if init_from else CandidateQNetwork.from_config(config)
    transitions = dataset.transitions(config.gamma)
    shapes = {k: tuple(v.shape[1:]) for k, v in transitions.observations.items()}
    buffer = ReplayBuffer(shapes, dataset.max_candidates, len(dataset), rng)
    buffer.add(transitions)
    learner = Learner(network, config)
    ctx = TrainingContext(config, network, gradient_steps, online=False)
    for callback in callbacks:
        callback.on_training_start(ctx)
    while ctx.gradient_steps < gradient_steps:
        ctx.last_loss = learner.update(buffer.sample(config.batch_size), config.cql_alpha)
        ctx.gradient_steps = learner.gradient_steps
        if not all([callback.on_step(ctx) for callback in callbacks]):
            break
    for callback in callbacks:
        callback.on_training_end(ctx)
    wall = time.perf_counter() - started
    return TrainResult(network, 0, learner.gradient_steps, ctx.last_loss, wall)
