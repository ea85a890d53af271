"""Model artifacts: safetensors weights, JSON metadata, ONNX for serving. No pickle anywhere.

A model directory holds:
- `model.safetensors` — the weights (tensors only; loading cannot run code);
- `metadata.json` — model id/version, FEATURIZER_VERSION, network spec, DQNConfig,
  data window, scenario, metrics, sha256 of the weights and ONNX files, created_at;
- `model.onnx` — the network for serving, inputs `candidates [batch, n, F_c]`
  (n dynamic), `context [batch, F_ctx]`, `mask [batch, n]` (bool), output
  `q_values [batch, n]`; verified against PyTorch with ONNX Runtime at save time.

`save_model` writes into a temporary sibling directory and renames it into place,
so a crash never leaves a half-written model under the final name. `load_model`
refuses a file whose sha256 differs from the metadata, and features of another
featurizer version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

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
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import (
    MASKED_Q,
    CandidateQNetwork,
    FlatQNetwork,
    QNetwork,
    build_network,
)

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
ARTIFACT_FORMAT = 1
ONNX_TOLERANCE = 1e-5
"""Max |ONNX Runtime - PyTorch| on the check inputs, in units of the Q-values' scale
(max(1, max |Q|)); beyond it the export is refused. An absolute 1e-5 is below float32
resolution once |Q| reaches ~100 (the spacing of float32 there is 7.6e-6), so two
correct float32 programs summing in another order differ by a few of those steps."""


class ArtifactError(Exception):
    """A model directory is missing, tampered with, or incompatible."""


class ModelArtifact(NamedTuple):
    directory: Path
    model_id: str
    weights_path: Path
    metadata_path: Path
    onnx_path: Path | None
    sha256: str


class LoadedModel(NamedTuple):
    q_network: QNetwork
    config: DQNConfig
    metadata: dict[str, Any]
    directory: Path
    onnx_path: Path | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(
    directory: Path,
    q_network: QNetwork,
    config: DQNConfig,
    metadata: Mapping[str, Any],
    export_onnx: bool = True,
) -> ModelArtifact:
    """Write weights, metadata and (optionally) a verified ONNX export; refuse to overwrite.

    `metadata` may carry `model_version`, `data_window`, `scenario`, `metrics` and
    anything else JSON-serialisable; it is stored as given next to the fixed fields.
    """
    directory = Path(directory)
    if directory.exists():
        raise ArtifactError(f"model directory {str(directory)!r} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        q_network.eval()
        weights = {k: v.detach().contiguous() for k, v in q_network.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS_FILE))
        onnx_sha = None
        if export_onnx:
            export_onnx_model(q_network, staging / ONNX_FILE)
            onnx_sha = sha256_of(staging / ONNX_FILE)
        model_id = str(metadata.get("model_id") or uuid.uuid4().hex)
        document = {
            **metadata,
            "artifact_format": ARTIFACT_FORMAT,
            "model_id": model_id,
            "model_version": metadata.get("model_version"),
            "featurizer_version": FEATURIZER_VERSION,
            "network": q_network.spec(),
            "dqn_config": config.to_dict(),
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256_of(staging / WEIGHTS_FILE),
            "onnx_file": ONNX_FILE if export_onnx else None,
            "onnx_sha256": onnx_sha,
            "created_at": datetime.now(UTC).isoformat(),
        }
        _write_json(staging / METADATA_FILE, document)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelArtifact(
        directory,
        model_id,
        directory / WEIGHTS_FILE,
        directory / METADATA_FILE,
        directory / ONNX_FILE if export_onnx else None,
        str(document["weights_sha256"]),
    )


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    with path.open("w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def load_model(directory: Path) -> LoadedModel:
    """Load a model directory after verifying hashes and the featurizer version.

    Every refusal is an ArtifactError with one sentence, whatever is wrong with the
    files (the CLI turns it into exit 2): a file with the right sha256 can still be
    something other than safetensors, and metadata can hold anything JSON can.
    """
    directory = Path(directory)
    metadata = _read_metadata(directory)
    weights_path = directory / str(metadata.get("weights_file", WEIGHTS_FILE))
    _verify(weights_path, metadata.get("weights_sha256"))
    onnx_path = None
    if metadata.get("onnx_file"):
        onnx_path = directory / str(metadata["onnx_file"])
        _verify(onnx_path, metadata.get("onnx_sha256"))
    spec = metadata["network"]
    if not isinstance(spec, dict) or not isinstance(metadata.get("dqn_config"), dict):
        raise ArtifactError(f"{str(directory / METADATA_FILE)!r} lacks a network or dqn_config")
    if spec.get("kind") == CandidateQNetwork.kind and (
        metadata.get("featurizer_version") != FEATURIZER_VERSION
    ):
        raise ArtifactError(
            f"model in {str(directory)!r} was trained on featurizer version "
            f"{metadata.get('featurizer_version')}, this code computes version {FEATURIZER_VERSION}"
        )
    try:
        network = build_network(spec)
        network.load_state_dict(load_file(str(weights_path)), strict=True)
        config = DQNConfig.from_dict(metadata["dqn_config"])
    except (ValueError, TypeError, RuntimeError, KeyError, OSError, SafetensorError) as exc:
        raise ArtifactError(
            f"model in {str(directory)!r} cannot be rebuilt: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    network.eval()
    return LoadedModel(network, config, metadata, directory, onnx_path)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "no detail"


def _read_metadata(directory: Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ArtifactError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{str(path)!r} is not UTF-8 JSON of a sane depth") from exc
    if not isinstance(document, dict) or "network" not in document:
        raise ArtifactError(f"{str(path)!r} is not dispatchloop model metadata")
    return document


def _verify(path: Path, expected: object) -> None:
    if not path.is_file():
        raise ArtifactError(f"model file {str(path)!r} is missing")
    try:
        actual = sha256_of(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read model file {str(path)!r}: {exc.strerror}") from exc
    if actual != expected:
        raise ArtifactError(
            f"sha256 of {str(path)!r} is {actual}, metadata says {expected}: "
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
