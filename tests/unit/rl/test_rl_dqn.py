"""The DQN loops: divergence is refused, callbacks steer training, dispatch and offline run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dispatchloop.replay.transitions import LoggedTransition
from dispatchloop.rl.artifacts import load_model
from dispatchloop.rl.buffer import Transitions
from dispatchloop.rl.callbacks import (
    CheckpointCallback,
    EvalCallback,
    StopOnSignalCallback,
    TrainingCallback,
    TrainingContext,
)
from dispatchloop.rl.dqn import (
    Learner,
    TrainingDivergedError,
    linear_epsilon,
    train_dispatch,
    train_gym,
    train_offline,
)
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.rl.networks import CandidateQNetwork, FlatQNetwork
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.scenario import Scenario

SMALL = DQNConfig(hidden_size=32, learning_starts=200, buffer_size=5_000, batch_size=32)
DEMAND = Scenario.default().arrays.demand  # the world the logged transitions come from


def test_absurd_learning_rate_raises_a_clear_error() -> None:
    config = DQNConfig(learning_rate=1e4, learning_starts=100, train_frequency=1, hidden_size=32)
    with pytest.raises(TrainingDivergedError, match="diverged at gradient step"):
        train_gym(config, "CartPole-v1", 5_000, seed=0)


def test_infinite_reward_raises_instead_of_training_on_it() -> None:
    net = FlatQNetwork(2, 2, 8, 1)
    learner = Learner(net, SMALL)
    obs = {"obs": np.zeros((4, 2), np.float32)}
    batch = Transitions(
        observations=obs,
        masks=np.ones((4, 2), bool),
        actions=np.zeros(4, np.int64),
        rewards=np.array([0.0, np.inf, 0.0, 0.0], np.float32),
        next_observations=obs,
        next_masks=np.ones((4, 2), bool),
        dones=np.zeros(4, np.float32),
        discounts=np.full(4, 0.9, np.float32),
    )
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(TrainingDivergedError, match="loss is"):
        learner.update(batch)
    for old, new in zip(before, net.parameters(), strict=True):
        assert torch.equal(old, new), "a diverged step must not touch the weights"


def test_epsilon_schedule_is_linear_then_flat() -> None:
    config = DQNConfig(exploration_initial_eps=1.0, exploration_final_eps=0.1)
    config = DQNConfig(**{**config.to_dict(), "exploration_fraction": 0.5})
    assert linear_epsilon(config, 0, 1000) == 1.0
    assert linear_epsilon(config, 250, 1000) == pytest.approx(0.55)
    assert linear_epsilon(config, 500, 1000) == pytest.approx(0.1)
    assert linear_epsilon(config, 900, 1000) == pytest.approx(0.1)


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.steps: list[int] = []

    def on_training_start(self, ctx: TrainingContext) -> None:
        self.events.append("start")

    def on_step(self, ctx: TrainingContext) -> bool:
        self.steps.append(ctx.env_steps)
        return True

    def on_training_end(self, ctx: TrainingContext) -> None:
        self.events.append("end")


def test_eval_callback_can_stop_training_early() -> None:
    scores: list[float] = []
    evaluate = EvalCallback(
        lambda policy: float(len(scores)),
        every_steps=400,
        on_result=lambda steps, score: (scores.append(score), len(scores) < 2)[1],
    )
    recorder = Recorder()
    result = train_gym(SMALL, "CartPole-v1", 5_000, seed=1, callbacks=[evaluate, recorder])
    assert [steps for steps, _ in evaluate.results] == [400, 800]
    assert result.env_steps == 800
    assert recorder.events == ["start", "end"]
    assert recorder.steps == list(range(1, 801))


def test_stop_on_signal_stops_at_the_next_step() -> None:
    event = threading.Event()
    event.set()
    result = train_gym(SMALL, "CartPole-v1", 5_000, seed=0, callbacks=[StopOnSignalCallback(event)])
    assert result.env_steps == 1


def test_dispatch_training_runs_and_checkpoints(tmp_path: Path) -> None:
    checkpoints = CheckpointCallback(tmp_path / "ckpt", every_steps=400)
    result = train_dispatch(
        SMALL,
        Scenario.default(),
        RewardSettings(),
        total_steps=800,
        seed=0,
        callbacks=[checkpoints],
        num_envs=4,
    )
    assert result.env_steps == 800
    assert result.gradient_steps == (800 - 200) // SMALL.train_frequency + 1
    assert np.isfinite(result.final_loss)
    assert isinstance(result.q_network, CandidateQNetwork)
    assert [p.name for p in checkpoints.saved] == ["step-000000400", "step-000000800"]
    loaded = load_model(checkpoints.saved[-1])
    for name, tensor in result.q_network.state_dict().items():
        assert torch.equal(loaded.q_network.state_dict()[name], tensor)


def test_fine_tuning_starts_from_the_given_network_without_changing_it() -> None:
    torch.manual_seed(3)
    pre = CandidateQNetwork.from_config(SMALL)
    snapshot = {k: v.clone() for k, v in pre.state_dict().items()}
    result = train_dispatch(
        SMALL, Scenario.default(), RewardSettings(), 400, seed=0, num_envs=4, init_from=pre
    )
    assert result.q_network is not pre
    for name, tensor in pre.state_dict().items():
        assert torch.equal(snapshot[name], tensor)
    changed = any(not torch.equal(snapshot[k], v) for k, v in result.q_network.state_dict().items())
    assert changed


def test_logged_dataset_pads_masks_and_keeps_propensities(
    logged_transitions: Callable[[int], list[LoggedTransition]],
) -> None:
    transitions = logged_transitions(40)
    data = LoggedDataset.from_transitions(transitions, RewardSettings(), DEMAND, max_candidates=12)
    assert len(data) == 40 and data.max_candidates == 12
    assert data.candidates.shape[1:] == (12, data.candidates.shape[2])
    assert data.masks[np.arange(40), data.actions].all()  # the logged action is always allowed
    assert not data.masks[:, 9:].any()  # padding beyond the 9 drivers
    assert np.all((data.propensities > 0) & (data.propensities <= 1))
    # Episodes end after steps 18 and 37; the last event ends the list (no next event known).
    assert np.flatnonzero(data.dones).tolist() == [18, 37, 39]
    assert np.all(data.next_masks[data.dones == 1] == 0)


def test_logged_gaps_are_left_out(
    logged_transitions: Callable[[int], list[LoggedTransition]],
) -> None:
    transitions = logged_transitions(5)
    gap = LoggedTransition(transitions[1].event, None, False)
    data = LoggedDataset.from_transitions([transitions[0], gap], RewardSettings(), DEMAND)
    assert len(data) == 1 and data.gaps == 1


def test_offline_training_with_cql_runs_and_counts_steps(
    logged_transitions: Callable[[int], list[LoggedTransition]],
) -> None:
    data = LoggedDataset.from_transitions(logged_transitions(60), RewardSettings(), DEMAND)
    config = DQNConfig(hidden_size=32, batch_size=32, cql_alpha=1.0, target_update_interval=50)
    recorder = Recorder()
    result = train_offline(config, data, gradient_steps=120, seed=0, callbacks=[recorder])
    assert result.gradient_steps == 120 and result.env_steps == 0
    assert np.isfinite(result.final_loss)
    assert recorder.events == ["start", "end"]


def test_progress_callback_reports_every_step_once() -> None:
    import logging

    from dispatchloop.progress import progress
    from dispatchloop.rl.callbacks import ProgressCallback

    with progress("train", 700, show_bar=False, logger=logging.getLogger("t")) as bar:
        train_gym(SMALL, "CartPole-v1", 700, seed=0, callbacks=[ProgressCallback(bar, 256)])
    assert bar.done == 700
