"""Baseline dispatch policies behind one small `Policy` protocol.

Every policy chooses only among eligible drivers (`action_mask == 1`). A policy
sees the observation; the planners also get the episode in `begin_episode`. The
hindsight planner uses all of it (a reference for what is achievable, not a
policy that could run in production); the rollout planner only what a
dispatcher knows at each decision (a reference for what is achievable without
foresight, at tens of milliseconds per decision).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import CANDIDATE_FEATURES
from dispatchloop.sim.dynamics import EpisodePlan, FleetState, apply_decisions, stack_plans
from dispatchloop.sim.planning import plan_sequence, rollout_returns, sampled_futures

Observation = dict[str, NDArray[Any]]
ETA_COLUMN = CANDIDATE_FEATURES.index("eta_h")


@runtime_checkable
class Policy(Protocol):
    """What the simulator, evaluation and the `simulate` producer need of a dispatcher."""

    name: str

    def begin_episode(self, plan: EpisodePlan) -> None:
        """The whole coming episode; only the hindsight planner uses it."""

    def act(self, obs: Observation) -> int:
        """Index of the chosen driver for one observation."""

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        """Chosen driver per row of stacked observations (leading axis = envs)."""


@runtime_checkable
class ProbabilisticPolicy(Policy, Protocol):
    """A policy that can say how likely each driver is: the base of every off-policy estimator.

    The planners cannot (their choice depends on the whole episode), so they are
    `Policy` only, and off-policy estimation refuses them.
    """

    def action_probs(self, obs: Observation) -> NDArray[np.float64]:
        """(B, n) probabilities of choosing each driver for stacked observations.

        Exact, not sampled: rows sum to 1 over eligible drivers and are 0 elsewhere.
        A row the policy cannot score (e.g. NaN weights) is NaN, never a guess.
        """


def one_hot(actions: NDArray[np.int64], width: int) -> NDArray[np.float64]:
    """(B, width) rows with a 1 at each action: the probabilities of a deterministic policy."""
    probs = np.zeros((len(actions), width), dtype=np.float64)
    probs[np.arange(len(actions)), actions] = 1.0
    return probs


def uniform_over_eligible(obs: Observation) -> NDArray[np.float64]:
    """(B, n) uniform probabilities over each row's eligible drivers."""
    mask = np.asarray(obs["action_mask"]).astype(np.float64)
    return np.asarray(mask / mask.sum(axis=1, keepdims=True), dtype=np.float64)


class RandomPolicy:
    """Uniform among eligible drivers; seeded, so a run can be repeated."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def begin_episode(self, plan: EpisodePlan) -> None:
        del plan  # a random dispatcher does not plan

    def act(self, obs: Observation) -> int:
        return int(self.act_batch({"action_mask": obs["action_mask"][None, :]})[0])

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        mask = obs["action_mask"].astype(bool)
        scores = np.where(mask, self._rng.random(mask.shape), -1.0)
        return np.asarray(scores.argmax(axis=1), dtype=np.int64)

    def action_probs(self, obs: Observation) -> NDArray[np.float64]:
        """Uniform over eligible drivers (the propensity logged with an event)."""
        return uniform_over_eligible(obs)


class GreedyPolicy:
    """Earliest ETA to the pickup (availability + drive) among eligible drivers.

    What most dispatch systems do by hand; ties go to the lower index. The ETA is
    the observation's `eta_h` feature (featurizer reference speed), i.e. what a
    dispatcher sees, not the simulator's calibrated speed.
    """

    name = "greedy"

    def begin_episode(self, plan: EpisodePlan) -> None:
        del plan  # greedy looks only at the present

    def act(self, obs: Observation) -> int:
        return int(
            self.act_batch(
                {"candidates": obs["candidates"][None], "action_mask": obs["action_mask"][None]}
            )[0]
        )

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        eta = obs["candidates"][..., ETA_COLUMN]
        masked = np.where(obs["action_mask"].astype(bool), eta, np.inf)
        return np.asarray(masked.argmin(axis=1), dtype=np.int64)

    def action_probs(self, obs: Observation) -> NDArray[np.float64]:
        """One-hot over the chosen driver (deterministic; ties go to the lower index)."""
        return one_hot(self.act_batch(obs), np.asarray(obs["action_mask"]).shape[1])


class EpsilonGreedyPolicy:
    """With probability `epsilon` a uniformly random eligible driver, else the base's choice.

    What a dispatch system logs with (exploration keeps every driver's propensity
    above zero) and how a candidate is made worse by construction (sabotage tests):
    its `action_probs` are exact, (1 - epsilon) * base + epsilon * uniform(eligible).
    """

    def __init__(self, base: ProbabilisticPolicy, epsilon: float, seed: int = 0) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], got {epsilon}")
        self.base = base
        self.epsilon = epsilon
        self.name = f"{base.name}-eps{epsilon:g}"
        self._rng = np.random.default_rng([seed, 2])

    def begin_episode(self, plan: EpisodePlan) -> None:
        self.base.begin_episode(plan)

    def act(self, obs: Observation) -> int:
        return int(self.act_batch({key: np.asarray(value)[None] for key, value in obs.items()})[0])

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        chosen = self.base.act_batch(obs)
        mask = np.asarray(obs["action_mask"]).astype(bool)
        explore = self._rng.random(len(chosen)) < self.epsilon
        scores = np.where(mask, self._rng.random(mask.shape), -1.0)
        return np.asarray(np.where(explore, scores.argmax(axis=1), chosen), dtype=np.int64)

    def action_probs(self, obs: Observation) -> NDArray[np.float64]:
        base = self.base.action_probs(obs)
        return (1.0 - self.epsilon) * base + self.epsilon * uniform_over_eligible(obs)


def masked_choice_is_valid(obs: Observation, actions: NDArray[np.int64]) -> bool:
    """True when every action points at an eligible row (used in tests and asserts)."""
    mask = obs["action_mask"]
    return bool(np.all(mask[np.arange(len(actions)), actions] == 1))


class HindsightPolicy:
    """A planner that knows the whole episode in advance: a strong reference, not an optimum.

    Given the episode (bookings, fleet, even the cancellation dice) it replays
    assignment sequences exactly with the simulator's own physics and keeps the
    best it finds:

    1. greedy (earliest ETA) and a rolling-horizon matching: at each booking, the
       next `lookahead` bookings are matched to drivers by min-cost assignment
       (scipy's linear_sum_assignment on the exact one-step cost) and the current
       booking takes its matched driver;
    2. then local search: every single reassignment (booking k → another eligible
       driver) is replayed in one batch, the best improvement kept, for up to
       `improve_passes` passes.

    Because greedy is one of the starting points and replays are exact, its
    episode return is never below greedy's. The true optimum (a scheduling MILP
    over all orders of queued jobs) is not attempted; DQN can in principle beat it.
    """

    name = "hindsight"
    needs_plan = True

    def __init__(self, lookahead: int = 4, improve_passes: int = 4) -> None:
        self.lookahead = lookahead
        self.improve_passes = improve_passes
        self._sequence: NDArray[np.int64] | None = None
        self._next = 0

    def begin_episode(self, plan: EpisodePlan) -> None:
        if plan.scenario is None or plan.reward is None:
            raise ValueError("the hindsight planner needs DispatchEnv.plan (with scenario, reward)")
        self._sequence = plan_sequence(plan, self.lookahead, self.improve_passes)
        self._next = 0

    def act(self, obs: Observation) -> int:
        if self._sequence is None or self._next >= len(self._sequence):
            raise RuntimeError("call begin_episode(env.plan) at the start of every episode")
        action = int(self._sequence[self._next])
        self._next += 1
        if obs["action_mask"][action] != 1:
            raise RuntimeError("the observation does not belong to the planned episode")
        return action

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        """Only one episode is planned at a time: a batch must hold exactly one row."""
        if obs["action_mask"].shape[0] != 1:
            raise ValueError("HindsightPolicy plans one episode: use act() per env")
        return np.array([self.act({key: value[0] for key, value in obs.items()})])


class RolloutPolicy:
    """A planner without foresight: greedy improved by one step of simulated lookahead.

    The rollout algorithm (Bertsekas): at each booking, every eligible driver is
    tried in `samples` futures drawn from the scenario (`sampled_futures`: later
    bookings and all cancellation draws from now on are redrawn, never read from
    the episode), the rest of each future is dispatched greedily, and the driver
    with the best mean return is taken. Ties keep the lower index.

    From the episode given to `begin_episode` it reads only what a dispatcher
    knows: the initial fleet, the bookings decided so far and the outcomes of its
    own earlier decisions (tested: changing the future does not change a
    decision). It needs the scenario, i.e. the calibrated world model, and tens of
    milliseconds per decision (~26 ms with 64 futures and 14 drivers, measured in
    benchmarks/policy_quality.py), so it is a reference, not a serving path.
    """

    name = "rollout"
    needs_plan = True

    def __init__(self, samples: int = 64, seed: int = 0) -> None:
        if samples < 1:
            raise ValueError("the rollout planner needs at least one sampled future")
        self.samples = samples
        self.seed = seed
        self._plan: EpisodePlan | None = None
        self._batch: EpisodePlan | None = None  # the plan as a batch of one
        self._fleet: FleetState | None = None
        self._decided = 0
        self._rng = np.random.default_rng(seed)

    def begin_episode(self, plan: EpisodePlan) -> None:
        if plan.scenario is None or plan.reward is None:
            raise ValueError("the rollout planner needs DispatchEnv.plan (with scenario, reward)")
        self._plan, self._batch = plan, stack_plans([plan])
        self._fleet = FleetState.start(self._batch)
        self._decided = 0
        # Seeded by the first booking's time, known from the first decision on.
        self._rng = np.random.default_rng([self.seed, int(plan.decided_s[0])])

    def act(self, obs: Observation) -> int:
        values = self.candidate_values(obs)
        chosen = int(values.argmax())  # ties keep the lower index
        self.record(chosen)
        return chosen

    def candidate_values(self, obs: Observation) -> NDArray[np.float64]:
        """The planner's value of every candidate of the current booking (-inf where masked).

        The mean return over the sampled futures from this booking on; with one
        eligible driver there is nothing to compare and its value is 0. Does not
        advance the episode: `record` the decision actually taken (by this planner
        or, when it labels another policy's states, by that policy).
        """
        plan, _, fleet, k = self._episode()
        assert plan.scenario is not None and plan.reward is not None  # begin_episode checked
        mask = obs["action_mask"].astype(bool)
        drivers = np.flatnonzero(mask[: plan.n_drivers])
        if len(drivers) == 0:
            raise ValueError("no eligible driver in the observation")
        values = np.full(len(mask), -np.inf)
        if len(drivers) == 1:
            values[drivers] = 0.0
            return values
        futures = sampled_futures(plan, k, plan.scenario, self._rng, self.samples)
        values[drivers] = rollout_returns(
            futures, fleet, k, drivers, scenario=plan.scenario, reward=plan.reward
        )
        return values

    def record(self, action: int) -> None:
        """Apply the decision taken for the current booking: known to a dispatcher by the next."""
        plan, batch, fleet, k = self._episode()
        assert plan.scenario is not None  # begin_episode checked
        apply_decisions(plan.scenario, fleet, batch, np.array([k]), np.array([action]))
        self._decided += 1

    def _episode(self) -> tuple[EpisodePlan, EpisodePlan, FleetState, int]:
        """The episode under way (plan, plan as a batch of one, fleet, booking index)."""
        plan, batch, fleet, k = self._plan, self._batch, self._fleet, self._decided
        if plan is None or batch is None or fleet is None or k >= plan.n_bookings:
            raise RuntimeError("call begin_episode(env.plan) at the start of every episode")
        return plan, batch, fleet, k

    def act_batch(self, obs: Observation) -> NDArray[np.int64]:
        """One episode at a time, like the hindsight planner."""
        if obs["action_mask"].shape[0] != 1:
            raise ValueError("RolloutPolicy plans one episode: use act() per env")
        return np.array([self.act({key: value[0] for key, value in obs.items()})])


NAMED_POLICIES: dict[str, Callable[[int], Policy]] = {
    "greedy": lambda seed: GreedyPolicy(),
    "random": RandomPolicy,
    "hindsight": lambda seed: HindsightPolicy(),
    "rollout": lambda seed: RolloutPolicy(seed=seed),
}
"""The baselines by name, built from a seed (used by `random` and `rollout` so reruns are
identical): one table for `simulate --policy` and `evaluate --policies`."""


@dataclass(frozen=True)
class LoggingPolicy:
    """The dispatcher whose decisions are logged, and what to write in `action`."""

    policy: Policy
    """Chooses the driver."""
    label: str
    """`action.policy` of the logged events (`greedy`, `dqn`, ...)."""
    model_version: str | None = None
    """`action.model_version`: None for a policy that is not a model."""
