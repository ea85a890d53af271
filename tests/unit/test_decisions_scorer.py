"""The torch-free scorer reads a saved model's files and scores as the PyTorch network does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from dispatchloop.decisions.scorer import CandidateScorer, ScorerSpecError
from dispatchloop.rl.artifacts import WEIGHTS_FILE, save_model
from dispatchloop.rl.card import CARD_FILE
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork


@pytest.mark.parametrize(("dueling", "activation", "n"), [(True, "relu", 9), (False, "tanh", 40)])
def test_scorer_from_saved_files_matches_the_torch_network(
    tmp_path: Path, dueling: bool, activation: str, n: int
) -> None:
    torch.manual_seed(3)
    network = CandidateQNetwork(32, 2, activation=activation, dueling=dueling)
    save_model(tmp_path / "m", network, DQNConfig(), {}, export_onnx=False)
    spec = json.loads((tmp_path / "m" / CARD_FILE).read_text())["network"]
    scorer = CandidateScorer.from_state(load_file(str(tmp_path / "m" / WEIGHTS_FILE)), spec)

    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(5, n, network.n_candidate_features)).astype(np.float32)
    context = rng.normal(size=(5, network.n_context_features)).astype(np.float32)
    mask = rng.random((5, n)) < 0.7
    mask[:, 0] = True
    with torch.no_grad():
        expected = network(
            torch.from_numpy(candidates), torch.from_numpy(context), torch.from_numpy(mask)
        ).numpy()
    got = scorer.q_values(candidates, context, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    ranking = np.where(mask, scorer.ranking_scores(candidates, context), -np.inf)
    assert (ranking.argmax(axis=1) == np.where(mask, expected, -np.inf).argmax(axis=1)).all()


def test_wrong_spec_or_missing_weights_are_refused_in_one_sentence(tmp_path: Path) -> None:
    network = CandidateQNetwork(8, 1)
    state = {k: v.numpy() for k, v in network.state_dict().items()}
    with pytest.raises(ScorerSpecError, match="not a candidate network"):
        CandidateScorer.from_state(state, {**network.spec(), "kind": "flat"})
    with pytest.raises(ScorerSpecError, match=r"lack 'encoder\.2\.weight'"):
        CandidateScorer.from_state(state, {**network.spec(), "n_layers": 2})
    with pytest.raises(ScorerSpecError, match="encoder layer 0"):
        CandidateScorer.from_state(state, {**network.spec(), "n_context_features": 1})


def test_the_scorer_module_does_not_import_torch() -> None:
    code = (
        "import sys; import dispatchloop.decisions.scorer, dispatchloop.decisions.featurizer; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
