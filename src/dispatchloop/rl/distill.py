"""Planner distillation: the candidate scorer trained to choose what the rollout planner chooses.

Why this exists: in the store-calibrated world, Q-learning plateaus at about a
fifth of the greedy→hindsight gap whatever its budget or hyperparameters, while
the rollout planner (`sim.policies.RolloutPolicy`), which values each driver by
simulating the rest of the shift, closes a third or more, at 10-40 ms a
decision: too slow to serve. Imitation turns the planner's slow judgement into
the same fast network the DQN uses (same featurizer, same serving path, same
artifacts), and learned far better than Q-learning did (benchmarks/BENCHMARKS.md,
Policy quality).

The algorithm is DAgger (Ross, Gordon & Bagnell, 2011), visible in
`train_distilled`:

1. round 0: play `episodes_per_round` TRAIN episodes with greedy; at every
   booking ask the planner for its choice (`planner_demonstrations`);
2. fit the scorer to all labels gathered so far (`fit_imitation`: softmax
   cross-entropy over the eligible candidates);
3. each later round, play new episodes with the current scorer, so the planner
   labels the states the scorer itself reaches, and refit.

The network's outputs are then scores whose argmax is the planner's choice,
not Q-values: its card says `"trainer": "distill"`, and nothing may read them
as returns. A labelled decision is a Gymnasium step, so `env_steps` counts them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from dispatchloop.rl.callbacks import TrainingCallback, TrainingContext
from dispatchloop.rl.dqn import TrainingDivergedError, TrainResult, single_threaded
from dispatchloop.rl.hyperparams import DQNConfig, refuse_unknown_fields
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import GreedyPolicy, Policy, RolloutPolicy
from dispatchloop.sim.rollout import train_seeds
from dispatchloop.sim.scenario import Scenario


@dataclass(frozen=True)
class DistillConfig:
    """Budget of a distillation run; the network's shape comes from `DQNConfig`."""

    rounds: int = 2
    """DAgger rounds: the first plays greedy, each later one the scorer fitted so far."""
    episodes_per_round: int = 1_000
    """TRAIN episodes played and labelled per round (every booking is a label)."""
    futures: int = 32
    """Sampled futures per label (the planner's `samples`): fewer is faster and noisier."""
    epochs: int = 10
    """Passes over all labels gathered so far, after each round."""
    batch_size: int = 256
    """Labelled decisions per gradient step."""
    learning_rate: float = 1e-3
    """Initial Adam step size, annealed to zero over each fit (cosine)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"distillation {field.name} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """Build from a dict, refusing unknown keys so a typo is not silently ignored."""
        refuse_unknown_fields(cls, values, "distill setting")
        return cls(**values)


class Demonstrations(NamedTuple):
    """Labelled decisions: the observation arrays and the planner's choice for each."""

    candidates: NDArray[np.float32]  # (N, n, F_c)
    context: NDArray[np.float32]  # (N, F_ctx)
    mask: NDArray[np.bool_]  # (N, n)
    choice: NDArray[np.int64]  # (N,)

    def extended(self, more: Demonstrations) -> Demonstrations:
        """These decisions followed by `more` (DAgger keeps every round's labels)."""
        return Demonstrations(
            np.concatenate([self.candidates, more.candidates]),
            np.concatenate([self.context, more.context]),
            np.concatenate([self.mask, more.mask]),
            np.concatenate([self.choice, more.choice]),
        )


def planner_demonstrations(
    scenario: Scenario,
    reward: RewardSettings,
    behaviour: Policy,
    seeds: Sequence[int],
    *,
    futures: int,
    planner_seed: int,
    ctx: TrainingContext | None = None,
    callbacks: Sequence[TrainingCallback] = (),
) -> Demonstrations:
    """Play `seeds` with `behaviour`; label every decision with the rollout planner's choice.

    The planner sees what a dispatcher would (its own guarantee) and follows the
    decisions `behaviour` actually takes, so the labels describe the states the
    behaviour reaches. With `ctx`, each labelled decision counts as an env step
    and `callbacks` see it (progress bars).
    """
    env = DispatchEnv(scenario, reward)
    planner = RolloutPolicy(futures, seed=planner_seed)
    rows: list[tuple[NDArray[Any], NDArray[Any], NDArray[Any], int]] = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        planner.begin_episode(env.plan)
        behaviour.begin_episode(env.plan)
        done = False
        while not done:
            label = int(planner.candidate_values(obs).argmax())
            rows.append((obs["candidates"], obs["context"], obs["action_mask"], label))
            action = behaviour.act(obs)
            planner.record(action)
            obs, _, done, _, _ = env.step(action)
        if ctx is not None:
            ctx.env_steps += scenario.bookings_per_episode
            ctx.episodes += 1
            for callback in callbacks:
                callback.on_step(ctx)
    candidates, context, mask, choice = zip(*rows, strict=True)
    return Demonstrations(
        np.stack(candidates).astype(np.float32),
        np.stack(context).astype(np.float32),
        np.stack(mask).astype(np.bool_),
        np.array(choice, dtype=np.int64),
    )


def fit_imitation(
    network: CandidateQNetwork,
    demos: Demonstrations,
    distill: DistillConfig,
    generator: torch.Generator,
) -> tuple[float, int]:
    """Softmax cross-entropy of the scores over eligible candidates; (mean last-epoch loss, steps).

    Masked candidates score `MASKED_Q` in the network, so they carry no probability
    and a label can never point at one (the planner only values eligible drivers).
    """
    candidates, context = torch.from_numpy(demos.candidates), torch.from_numpy(demos.context)
    mask, choice = torch.from_numpy(demos.mask), torch.from_numpy(demos.choice)
    if not bool(mask[torch.arange(len(choice)), choice].all()):
        raise ValueError("a demonstration chose an ineligible candidate")
    steps_per_epoch = -(-len(choice) // distill.batch_size)
    optimizer = torch.optim.Adam(network.parameters(), lr=distill.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, distill.epochs * steps_per_epoch
    )
    epoch_loss = float("nan")
    for _ in range(distill.epochs):
        total = 0.0
        order = torch.randperm(len(choice), generator=generator)
        for start in range(0, len(choice), distill.batch_size):
            rows = order[start : start + distill.batch_size]
            scores = network(candidates[rows], context[rows], mask[rows])
            loss = functional.cross_entropy(scores, choice[rows])
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"imitation loss is {loss.item()}: training diverged")
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        epoch_loss = total / len(choice)
    return epoch_loss, distill.epochs * steps_per_epoch


def train_distilled(  # noqa: PLR0917 - mirrors train_dispatch's signature
    config: DQNConfig,
    scenario: Scenario,
    reward: RewardSettings,
    distill: DistillConfig,
    seed: int,
    callbacks: Sequence[TrainingCallback] = (),
) -> TrainResult:
    """DAgger with the rollout planner as the teacher; see the module docstring."""
    started = time.perf_counter()
    with single_threaded():
        torch.manual_seed(seed)
        network = CandidateQNetwork.from_config(config)
        generator = torch.Generator().manual_seed(seed)
        total = distill.rounds * distill.episodes_per_round * scenario.bookings_per_episode
        ctx = TrainingContext(config, network, total, online=True)
        for callback in callbacks:
            callback.on_training_start(ctx)
        behaviour: Policy = GreedyPolicy()
        demos: Demonstrations | None = None
        for round_index in range(distill.rounds):
            offset = (seed * distill.rounds + round_index) * distill.episodes_per_round
            seeds = train_seeds(distill.episodes_per_round, offset=offset)
            labelled = planner_demonstrations(
                scenario,
                reward,
                behaviour,
                seeds,
                futures=distill.futures,
                planner_seed=seed,
                ctx=ctx,
                callbacks=callbacks,
            )
            demos = labelled if demos is None else demos.extended(labelled)
            ctx.last_loss, steps = fit_imitation(network, demos, distill, generator)
            ctx.gradient_steps += steps
            behaviour = DQNPolicy(network)
        for callback in callbacks:
            callback.on_training_end(ctx)
    wall = time.perf_counter() - started
    return TrainResult(network, ctx.env_steps, ctx.gradient_steps, ctx.last_loss, wall)
