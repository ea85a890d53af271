"""Model artifacts: safetensors weights, a model card, ONNX for serving. No pickle anywhere.

A model directory holds:
- `model.safetensors` — the weights (tensors only; loading cannot run code);
- `card.json` — the `ModelCard` (rl/card.py): model id, trainer, FEATURIZER_VERSION,
  network spec, hyperparameters, data window, scenario, metrics, sha256 of every
  file, created_at (directories written before the card have `metadata.json`,
  which still loads);
- `model.onnx` — the network for serving, inputs `candidates [batch, n, F_c]`
  (n dynamic), `context [batch, F_ctx]`, `mask [batch, n]` (bool), output
  `q_values [batch, n]`; verified against PyTorch with ONNX Runtime at save time.

This module is the card's one writer (`save_model`) and, for loading weights, its
one reader (`load_model`), both through rl/card.py. `save_model` writes into a
temporary sibling directory, fsyncs every file and renames it into place, so a
crash never leaves a half-written model under the final name. `load_model`
refuses a file whose sha256 differs from the card, and features of another
featurizer version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dispatchloop.decisions.featurizer import (
    FEATURIZER_VERSION,
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
)
from dispatchloop.decisions.scorer import MASKED_Q
from dispatchloop.rl.card import (
    CARD_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    CardDraft,
    CardError,
    ModelCard,
    fsync_directory,
    read_card,
    scenario_fingerprint,
    sha256_of,
    write_card,
)
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import (
    CandidateQNetwork,
    FlatQNetwork,
    QNetwork,
    build_network,
)

__all__ = [
    "CARD_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "ArtifactError",
    "LoadedModel",
    "ModelArtifact",
    "load_model",
    "save_model",
    "sha256_of",
    "verify_model_files",
]

ONNX_TOLERANCE = 1e-5
"""Max |ONNX Runtime - PyTorch| on the check inputs, in units of the Q-values' scale
(max(1, max |Q|)); beyond it the export is refused. An absolute 1e-5 is below float32
resolution once |Q| reaches ~100 (the spacing of float32 there is 7.6e-6), so two
correct float32 programs summing in another order differ by a few of those steps."""


class ArtifactError(CardError):
    """A model directory is missing, tampered with, or incompatible."""


class ModelArtifact(NamedTuple):
    directory: Path
    model_id: str
    weights_path: Path
    card_path: Path
    onnx_path: Path | None
    sha256: str


class LoadedModel(NamedTuple):
    q_network: QNetwork
    config: DQNConfig
    card: ModelCard
    directory: Path
    onnx_path: Path | None


def save_model(
    directory: Path,
    q_network: QNetwork,
    config: DQNConfig,
    draft: CardDraft | None = None,
    export_onnx: bool = True,
) -> ModelArtifact:
    """Write weights, the card and (optionally) a verified ONNX export; refuse to overwrite."""
    directory = Path(directory)
    if directory.exists():
        raise ArtifactError(f"model directory {str(directory)!r} already exists")
    draft = draft or CardDraft()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        q_network.eval()
        weights = {k: v.detach().contiguous() for k, v in q_network.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS_FILE))
        files = {WEIGHTS_FILE: sha256_of(staging / WEIGHTS_FILE)}
        if export_onnx:
            export_onnx_model(q_network, staging / ONNX_FILE)
            files[ONNX_FILE] = sha256_of(staging / ONNX_FILE)
        for name in files:
            _fsync_file(staging / name)
        card = ModelCard(
            **draft.model_dump(),
            model_id=uuid.uuid4().hex,
            featurizer_version=FEATURIZER_VERSION,
            network=q_network.spec(),
            hyperparameters=config.to_dict(),
            scenario_fingerprint=scenario_fingerprint(draft.scenario),
            onnx_file=ONNX_FILE if export_onnx else None,
            files=files,
            created_at=datetime.now(UTC),
        )
        write_card(staging, card)
        os.replace(staging, directory)
        fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelArtifact(
        directory,
        card.model_id,
        directory / WEIGHTS_FILE,
        directory / CARD_FILE,
        directory / ONNX_FILE if export_onnx else None,
        card.weights_sha256,
    )


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def verify_model_files(directory: Path, card: ModelCard) -> None:
    """Every file the card lists is present with its sha256, and the featurizer matches."""
    for name, expected in sorted(card.files.items()):
        _verify(directory / name, expected)
    if card.network.get("kind") == CandidateQNetwork.kind and (
        card.featurizer_version != FEATURIZER_VERSION
    ):
        raise ArtifactError(
            f"model in {str(directory)!r} was trained on featurizer version "
            f"{card.featurizer_version}, this code computes version {FEATURIZER_VERSION}"
        )


def load_model(directory: Path) -> LoadedModel:
    """Load a model directory after verifying hashes and the featurizer version.

    Every refusal is an ArtifactError with one sentence, whatever is wrong with the
    files (the CLI turns it into exit 2): a file with the right sha256 can still be
    something other than safetensors, and metadata can hold anything JSON can.
    """
    directory = Path(directory)
    try:
        card = read_card(directory)
    except ArtifactError:
        raise
    except CardError as exc:
        raise ArtifactError(str(exc)) from exc
    verify_model_files(directory, card)
    weights_path = directory / card.weights_file
    onnx_path = directory / card.onnx_file if card.onnx_file else None
    try:
        network = build_network(dict(card.network))
        network.load_state_dict(load_file(str(weights_path)), strict=True)
        config = DQNConfig.from_dict(dict(card.hyperparameters))
    except (ValueError, TypeError, RuntimeError, KeyError, OSError, SafetensorError) as exc:
        raise ArtifactError(
            f"model in {str(directory)!r} cannot be rebuilt: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    network.eval()
    return LoadedModel(network, config, card, directory, onnx_path)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "no detail"


def _verify(path: Path, expected: object) -> None:
    if not path.is_file():
        raise ArtifactError(f"model file {str(path)!r} is missing")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read model file {str(path)!r}: {exc.strerror}") from exc
    if actual != expected:
        raise ArtifactError(
            f"sha256 of {str(path)!r} is {actual}, the card says {expected}: "
            "the file was changed or corrupted, refusing to load it"
        )


# --- ONNX --------------------------------------------------------------------------------


def _example_inputs(network: QNetwork, batch: int, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if isinstance(network, CandidateQNetwork):
        mask = rng.random((batch, n)) < 0.7
        mask[:, 0] = True
        return {
            "candidates": rng.normal(size=(batch, n, N_CANDIDATE_FEATURES)).astype(np.float32),
            "context": rng.normal(size=(batch, N_CONTEXT_FEATURES)).astype(np.float32),
            "mask": mask,
        }
    assert isinstance(network, FlatQNetwork)
    return {"obs": rng.normal(size=(batch, network.obs_dim)).astype(np.float32)}


def export_onnx_model(network: QNetwork, path: Path) -> None:
    """Export with dynamic batch (and candidate count), then check it against PyTorch."""
    example = _example_inputs(network, 2, 9, seed=0)
    names = list(example)
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in names}
    axes["q_values"] = {0: "batch"}
    if isinstance(network, CandidateQNetwork):
        axes["candidates"][1] = axes["mask"][1] = axes["q_values"][1] = "n"
    args = tuple(torch.from_numpy(example[name]) for name in names)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports this MLP in 0.3 s instead of
        # 11 s for torch.export; the ONNX check below proves the result either way.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network,
            args,
            str(path),
            input_names=names,
            output_names=["q_values"],
            dynamic_axes=axes,
            opset_version=18,
            dynamo=False,
        )
    verify_onnx(network, path)


def verify_onnx(network: QNetwork, path: Path) -> float:
    """Worst ONNX Runtime vs PyTorch difference relative to the Q scale; raise if too big.

    Checked at 9 and 40 candidates. Masked slots hold the MASKED_Q sentinel, not a
    Q-value: both runtimes must mask the same slots, and only real Q-values are compared.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, n, seed in ((1, 9, 1), (4, 40, 2)):
        inputs = _example_inputs(network, batch, n, seed)
        onnx_q = session.run(None, inputs)[0]
        with torch.no_grad():
            torch_q = network(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        masked = torch_q <= MASKED_Q / 2
        if not np.array_equal(masked, onnx_q <= MASKED_Q / 2):
            raise ArtifactError("ONNX export masks other candidates than PyTorch")
        real = ~masked
        scale = max(1.0, float(np.abs(torch_q[real]).max()))
        worst = max(worst, float(np.abs(onnx_q[real] - torch_q[real]).max()) / scale)
    if not worst <= ONNX_TOLERANCE:
        raise ArtifactError(
            f"ONNX export differs from PyTorch by {worst:.3g} of the Q scale "
            f"(tolerance {ONNX_TOLERANCE:g})"
        )
    return worst
