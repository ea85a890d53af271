"""Model artifacts: round trip, ONNX equals PyTorch, tampering and version mismatches refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dispatchloop.decisions.featurizer import (
    FEATURIZER_VERSION,
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
)
from dispatchloop.rl.artifacts import (
    ArtifactError,
    export_onnx_model,
    load_model,
    save_model,
    sha256_of,
    verify_onnx,
)
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork, FlatQNetwork

CONFIG = DQNConfig(hidden_size=32, n_layers=2)
CLI = (sys.executable, "-m", "dispatchloop.cli")


@pytest.fixture
def network() -> CandidateQNetwork:
    torch.manual_seed(0)
    return CandidateQNetwork.from_config(CONFIG)


def _inputs(batch: int, n: int, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, n)) < 0.6
    mask[:, -1] = True
    return {
        "candidates": rng.normal(size=(batch, n, N_CANDIDATE_FEATURES)).astype(np.float32),
        "context": rng.normal(size=(batch, N_CONTEXT_FEATURES)).astype(np.float32),
        "mask": mask,
    }


def test_round_trip_keeps_weights_config_and_card(
    tmp_path: Path, network: CandidateQNetwork
) -> None:
    artifact = save_model(
        tmp_path / "m1",
        network,
        CONFIG,
        CardDraft(model_version="v1", metrics={"sim_return": -100.5}, scenario={"n_drivers": 9}),
    )
    loaded = load_model(artifact.directory)
    assert loaded.config == CONFIG
    card = loaded.card
    assert card.model_version == "v1" and card.metrics == {"sim_return": -100.5}
    assert card.featurizer_version == FEATURIZER_VERSION
    assert card.weights_sha256 == artifact.sha256 and len(artifact.sha256) == 64
    assert card.network == network.spec() and card.created_at.tzinfo is not None
    assert card.scenario_fingerprint is not None and len(card.scenario_fingerprint) == 64
    inputs = {k: torch.from_numpy(v) for k, v in _inputs(3, 12).items()}
    torch.testing.assert_close(loaded.q_network(*inputs.values()), network(*inputs.values()))
    assert not list(tmp_path.glob(".m1.*")), "the staging directory must be gone"


def test_a_run_without_a_loss_still_registers(tmp_path: Path, network: CandidateQNetwork) -> None:
    """A DQN stopped before its first gradient step has a NaN loss: the card leaves it out
    (JSON has no NaN) and the registry accepts the directory (it refused a null before)."""
    from dispatchloop.registry import open_registry

    metrics = {"final_loss": float("nan"), "env_steps": 20.0}
    artifact = save_model(tmp_path / "m", network, CONFIG, CardDraft(metrics=metrics))
    assert load_model(artifact.directory).card.metrics == {"env_steps": 20.0}
    registry = open_registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "registry")
    try:
        version = registry.register(artifact.directory, actor="test").version
        assert registry.verify(version).version == version  # raises on any mismatch
    finally:
        registry.close()


def test_onnx_matches_pytorch_for_9_and_40_candidates(
    tmp_path: Path, network: CandidateQNetwork
) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG)
    assert artifact.onnx_path is not None
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["candidates", "context", "mask"]
    for batch, n in ((1, 9), (7, 40)):
        inputs = _inputs(batch, n)
        onnx_q = session.run(None, inputs)[0]
        with torch.no_grad():
            torch_q = network(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        assert onnx_q.shape == (batch, n)
        assert np.abs(onnx_q - torch_q).max() <= 1e-5


def test_onnx_check_holds_at_dispatch_scale_q_values(tmp_path: Path) -> None:
    """Returns of a shift are around -100: float32 spacing there is 7.6e-6, so the check
    is relative to the Q scale; a correct export of such a network must be accepted."""
    # Seed and scale chosen so ONNX Runtime and PyTorch differ by 3e-5 in absolute terms
    # (a few float32 steps at |Q| ~ 170): the old absolute 1e-5 check refused this export.
    torch.manual_seed(4)
    network = CandidateQNetwork(128, 2)
    layers = [m for m in network.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(4.0)
        layers[-1].bias.fill_(-150.0)
    artifact = save_model(tmp_path / "big", network, CONFIG)
    assert artifact.onnx_path is not None
    inputs = _inputs(4, 40)
    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    onnx_q = session.run(None, inputs)[0]
    with torch.no_grad():
        torch_q = network(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    real = inputs["mask"]
    scale = float(np.abs(torch_q[real]).max())
    assert scale > 50.0, "the network must produce dispatch-scale Q-values for this test"
    assert np.abs(onnx_q[real] - torch_q[real]).max() <= 1e-5 * scale
    assert (onnx_q[~real] <= -1e8).all()


def test_onnx_check_refuses_an_export_of_another_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    exported, other = CandidateQNetwork(16, 1), CandidateQNetwork(16, 1)
    export_onnx_model(exported, tmp_path / "a.onnx")
    with pytest.raises(ArtifactError, match="differs from PyTorch"):
        verify_onnx(other, tmp_path / "a.onnx")


def test_flat_network_round_trip(tmp_path: Path) -> None:
    net = FlatQNetwork(4, 2, 16, 2)
    loaded = load_model(save_model(tmp_path / "flat", net, CONFIG).directory)
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded.q_network(x), net(x))


def test_tampered_weights_are_refused(tmp_path: Path, network: CandidateQNetwork) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG)
    data = bytearray(artifact.weights_path.read_bytes())
    data[-1] ^= 0x01
    artifact.weights_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(artifact.directory)


def test_tampered_onnx_is_refused(tmp_path: Path, network: CandidateQNetwork) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG)
    assert artifact.onnx_path is not None
    artifact.onnx_path.write_bytes(artifact.onnx_path.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        load_model(artifact.directory)


def test_other_featurizer_version_is_refused(tmp_path: Path, network: CandidateQNetwork) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG, export_onnx=False)
    meta = json.loads(artifact.card_path.read_text())
    meta["featurizer_version"] = FEATURIZER_VERSION + 1
    artifact.card_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="featurizer version"):
        load_model(artifact.directory)


def test_existing_directory_is_not_overwritten(tmp_path: Path, network: CandidateQNetwork) -> None:
    save_model(tmp_path / "m", network, CONFIG, export_onnx=False)
    with pytest.raises(ArtifactError, match="already exists"):
        save_model(tmp_path / "m", network, CONFIG, export_onnx=False)


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a model directory"):
        load_model(tmp_path / "nothing")


def test_no_pickle_in_the_artifact(tmp_path: Path, network: CandidateQNetwork) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG)
    names = sorted(p.name for p in artifact.directory.iterdir())
    assert names == ["card.json", "model.onnx", "model.safetensors"]
    assert not artifact.weights_path.read_bytes().startswith(b"\x80")  # pickle protocol marker


def test_a_failed_save_leaves_nothing_behind(
    tmp_path: Path, network: CandidateQNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written in a staging directory and renamed at the end: no half model under the name."""
    from dispatchloop.rl import artifacts

    def broken(*args: object) -> float:
        raise ArtifactError("ONNX export differs from PyTorch by 1 (tolerance 1e-05)")

    monkeypatch.setattr(artifacts, "verify_onnx", broken)
    with pytest.raises(ArtifactError, match="differs"):
        save_model(tmp_path / "m", network, CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_a_format_1_directory_still_loads(tmp_path: Path, network: CandidateQNetwork) -> None:
    """Directories written before the card (metadata.json) load, with their lineage kept."""
    artifact = save_model(tmp_path / "new", network, CONFIG, export_onnx=False)
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(artifact.weights_path.read_bytes())
    document = {
        "artifact_format": 1,
        "model_id": "abc",
        "model_version": "demo",
        "featurizer_version": FEATURIZER_VERSION,
        "network": network.spec(),
        "dqn_config": CONFIG.to_dict(),
        "weights_file": "model.safetensors",
        "weights_sha256": artifact.sha256,
        "onnx_file": None,
        "onnx_sha256": None,
        "created_at": "2026-11-20T10:00:00+00:00",
        "training": {"mode": "distill"},
        "checkpoint": {"env_steps": 5},
    }
    (legacy / "metadata.json").write_text(json.dumps(document))
    loaded = load_model(legacy)
    assert loaded.card.model_id == "abc" and loaded.card.trainer == "distill"
    assert loaded.card.training["checkpoint"] == {"env_steps": 5}
    assert loaded.card.files == {"model.safetensors": artifact.sha256}
    assert loaded.config == CONFIG


def test_a_card_with_an_unknown_key_is_refused(tmp_path: Path, network: CandidateQNetwork) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG, export_onnx=False)
    document = json.loads(artifact.card_path.read_text())
    document["surprise"] = 1
    artifact.card_path.write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match="surprise"):
        load_model(artifact.directory)


# --- whatever is wrong with a file: one sentence (ArtifactError), never a traceback -------


def _rewrite(directory: Path, **changes: object) -> None:
    path = directory / "card.json"
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _rehash_weights(directory: Path) -> None:
    path = directory / "card.json"
    document = json.loads(path.read_text())
    document["files"]["model.safetensors"] = sha256_of(directory / "model.safetensors")
    path.write_text(json.dumps(document))


def _junk_weights_with_right_sha(directory: Path) -> None:
    (directory / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    _rehash_weights(directory)


def _other_networks_weights_with_right_sha(directory: Path) -> None:
    other = CandidateQNetwork.from_config(DQNConfig(hidden_size=8, n_layers=1))
    save_model(directory.parent / "other", other, CONFIG, export_onnx=False)
    weights = (directory.parent / "other" / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(weights)
    _rehash_weights(directory)


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_junk_weights_with_right_sha, "SafetensorError"),
        (_other_networks_weights_with_right_sha, "cannot be rebuilt"),
        (lambda d: _rewrite(d, network="mlp"), "network"),
        (lambda d: _rewrite(d, network={"kind": "transformer"}), "unknown network kind"),
        (lambda d: _rewrite(d, hyperparameters={"learning_rat": 1.0}), "cannot be rebuilt"),
        (lambda d: _rewrite(d, hyperparameters=None), "hyperparameters"),
        (lambda d: (d / "card.json").write_bytes(b"\xff\xfe{}"), "card"),
    ],
)
def test_every_refusal_is_one_artifact_error(
    tmp_path: Path, network: CandidateQNetwork, spoil: Any, says: str
) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG, export_onnx=False)
    spoil(artifact.directory)
    with pytest.raises(ArtifactError, match=says) as refused:
        load_model(artifact.directory)
    assert "\n" not in str(refused.value)


def test_cli_refuses_a_non_safetensors_file_with_the_right_sha_exit_2(
    tmp_path: Path, network: CandidateQNetwork
) -> None:
    artifact = save_model(tmp_path / "m", network, CONFIG, export_onnx=False)
    _junk_weights_with_right_sha(artifact.directory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")}
    env["DISPATCHLOOP_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [*CLI, "evaluate", "--episodes", "2", "--policies", f"greedy,{artifact.directory}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "SafetensorError" in result.stderr
