"""Planner distillation: labels are the planner's own choices on the behaviour's states, the
fitted scorer follows them, and a small DAgger run learns a policy that beats random."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dispatchloop.rl.distill import (
    Demonstrations,
    DistillConfig,
    fit_imitation,
    planner_demonstrations,
    train_distilled,
)
from dispatchloop.rl.dqn import TrainingDivergedError
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import GreedyPolicy, RandomPolicy, RolloutPolicy
from dispatchloop.sim.rollout import run_episodes, validation_seeds
from dispatchloop.sim.scenario import Scenario

REWARD = RewardSettings()


def test_labels_are_the_planners_choices_on_the_behaviours_states() -> None:
    """Following the behaviour (random here), the labels equal what a planner fed the same
    decisions chooses, are eligible, and the observations are the behaviour's trajectory."""
    scenario = Scenario.default()
    demos = planner_demonstrations(
        scenario, REWARD, RandomPolicy(3), [5, 6], futures=4, planner_seed=1
    )
    assert len(demos.choice) == 2 * scenario.bookings_per_episode
    assert demos.mask[np.arange(len(demos.choice)), demos.choice].all()

    env, planner, behaviour = DispatchEnv(scenario, REWARD), RolloutPolicy(4, 1), RandomPolicy(3)
    row = 0
    for seed in (5, 6):
        obs, _ = env.reset(seed=seed)
        planner.begin_episode(env.plan)
        done = False
        while not done:
            np.testing.assert_array_equal(demos.candidates[row], obs["candidates"])
            assert demos.choice[row] == int(planner.candidate_values(obs).argmax())
            action = behaviour.act(obs)
            planner.record(action)
            obs, _, done, _, _ = env.step(action)
            row += 1
    assert len(set(demos.choice.tolist())) > 1


def test_candidate_values_then_record_is_act() -> None:
    """The split used for labelling changes nothing in the planner's own decisions."""
    env = DispatchEnv(Scenario.default(), REWARD)
    obs, _ = env.reset(seed=11)
    acting, labelling = RolloutPolicy(4, seed=2), RolloutPolicy(4, seed=2)
    acting.begin_episode(env.plan)
    labelling.begin_episode(env.plan)
    for _ in range(6):
        values = labelling.candidate_values(obs)
        assert np.isneginf(values[obs["action_mask"] == 0]).all()
        action = acting.act(obs)
        assert action == int(values.argmax())
        labelling.record(action)
        obs, *_ = env.step(action)


def test_fit_imitation_learns_a_learnable_teacher_and_refuses_masked_labels() -> None:
    """Labels that are a function of the features (greedy's earliest ETA) are learnt."""
    scenario = Scenario.default()
    demos = planner_demonstrations(
        scenario, REWARD, GreedyPolicy(), range(8), futures=2, planner_seed=0
    )
    greedy = GreedyPolicy().act_batch({"candidates": demos.candidates, "action_mask": demos.mask})
    demos = demos._replace(choice=greedy)
    torch.manual_seed(0)
    network = CandidateQNetwork(64, 2)
    before = _agreement(network, demos)
    config = DistillConfig(epochs=60, batch_size=32, learning_rate=3e-3)
    loss, steps = fit_imitation(network, demos, config, torch.Generator().manual_seed(0))
    assert steps == 60 * -(-len(demos.choice) // 32)
    assert _agreement(network, demos) > max(0.9, before + 0.3), (before, loss)

    bad = demos._replace(mask=demos.mask.copy())
    bad.mask[0, bad.choice[0]] = False
    with pytest.raises(ValueError, match="ineligible"):
        fit_imitation(network, bad, config, torch.Generator())


def _agreement(network: CandidateQNetwork, demos: Demonstrations) -> float:
    with torch.no_grad():
        scores = network(*(torch.from_numpy(a) for a in demos[:3]))
    return float((scores.argmax(dim=1).numpy() == demos.choice).mean())


def test_a_diverging_fit_is_an_error() -> None:
    demos = planner_demonstrations(
        Scenario.default(), REWARD, GreedyPolicy(), [0], futures=2, planner_seed=0
    )
    poisoned = demos._replace(candidates=np.full_like(demos.candidates, np.nan))
    with pytest.raises(TrainingDivergedError):
        fit_imitation(CandidateQNetwork(16, 1), poisoned, DistillConfig(), torch.Generator())


def test_small_dagger_run_beats_random_and_counts_its_work() -> None:
    scenario = Scenario.default()
    distill = DistillConfig(rounds=2, episodes_per_round=12, futures=4, epochs=8, batch_size=64)
    result = train_distilled(DQNConfig(hidden_size=64), scenario, REWARD, distill, seed=0)
    assert result.env_steps == 2 * 12 * scenario.bookings_per_episode
    assert result.gradient_steps > 0 and np.isfinite(result.final_loss)
    seeds = validation_seeds(30)
    distilled = run_episodes(DQNPolicy(result.q_network), scenario, REWARD, seeds).returns
    random = run_episodes(RandomPolicy(0), scenario, REWARD, seeds).returns
    assert distilled.mean() > random.mean() + 100


def test_distill_config_refuses_non_positive_budgets() -> None:
    with pytest.raises(ValueError, match="rounds"):
        DistillConfig(rounds=0)
