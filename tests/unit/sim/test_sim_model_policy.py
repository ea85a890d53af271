"""`simulate --policy DIR`: a saved model logs its decisions with its version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import load_logging_policy
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.producer import SimulateInputError, resolve_policy, simulated_events
from dispatchloop.sim.scenario import Scenario


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    directory = tmp_path / "model"
    network = CandidateQNetwork(16, 1)
    save_model(
        directory, network, DQNConfig(), CardDraft(model_version="v-test"), export_onnx=False
    )
    return directory


def test_model_directory_policy_produces_valid_events(model_dir: Path) -> None:
    logging_policy = resolve_policy(str(model_dir), 0, load_logging_policy)
    assert (logging_policy.label, logging_policy.model_version) == ("dqn", "v-test")
    events = list(
        simulated_events(Scenario.default(), RewardSettings(), logging_policy, 25, seed=2)
    )
    parsed = [parse_outcome(json.dumps(e).encode(), 65_536) for e in events]
    assert all(isinstance(p, DispatchOutcomeEvent) for p in parsed)
    for event in parsed:
        assert isinstance(event, DispatchOutcomeEvent)
        assert event.action.model_version == "v-test"
        assert event.action.propensity == 1.0  # a greedy network, no exploration
        assert event.candidates[event.action_index].eligible


def test_tampered_model_is_refused(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SimulateInputError, match="cannot load the model"):
        resolve_policy(str(model_dir), 0, load_logging_policy)
