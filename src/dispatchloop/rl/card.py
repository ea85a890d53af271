"""The model card: one typed, frozen record of what a model directory holds and where it
came from. It replaces the untyped metadata dict that training, the demo and the
checkpoint callback used to assemble by hand.

Why here (rl/) and not in registry/: training writes the card and the registry
reads it, and `rl` must not import `registry` (DESIGN.md layering); the registry
re-exports it. This module never imports torch, so the registry's read side (and
serving) can read and verify cards without it.

One writer (`write_card`) and one reader (`read_card`): `rl/artifacts.py` writes
through the first, everything reads through the second. A card (`card.json`)
refuses unknown keys: an unknown key is a bug or a newer writer. Directories
written before the card existed (`metadata.json`, artifact format 1) are read
through `card_from_legacy`, so old model directories still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)

from dispatchloop.errors import InputError

CARD_FILE = "card.json"
LEGACY_METADATA_FILE = "metadata.json"
CARD_FORMAT: Literal[2] = 2
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
UNSAFE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".joblib", ".npy")
"""Files that could hold a pickle: never loaded, reported when found next to a model."""

Trainer = Literal["dqn", "distill"]


class CardError(InputError):
    """A model directory has no readable card, or its card is not a dispatchloop card."""


class _CardRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataWindow(_CardRecord):
    """Which logged events a model learned from."""

    start: AwareDatetime | None = None
    """First decided_at of the window (inclusive); None: from the beginning of the store."""
    end: AwareDatetime | None = None
    """End of the window (exclusive); None: up to the newest stored event."""
    events: int | None = Field(default=None, ge=0)
    """Logged events (or transitions) in the window; None when trained on a simulator only."""


class CardDraft(_CardRecord):
    """What a trainer knows about its run; `save_model` completes it into a `ModelCard`."""

    trainer: Trainer = "dqn"
    """`dqn` (online/offline Q-learning) or `distill` (scorer taught by the rollout planner)."""
    model_version: str | None = None
    """A label the trainer chose (e.g. `demo`); the registry assigns the real version."""
    training: dict[str, JsonValue] = Field(default_factory=dict)
    """How it was trained: mode, seed, steps, env id, distill settings, checkpoint step."""
    data_window: DataWindow | None = None
    """The logged data it learned from; None for a simulator- or Gym-only run."""
    source_offsets: dict[str, int] = Field(default_factory=dict)
    """`topic/partition` → next offset ingested when the window was read (lineage)."""
    scenario: dict[str, JsonValue] | None = None
    """The simulated world (Scenario.to_dict()); serving rebuilds the demand map from it."""
    parent_version: str | None = None
    """The registry version this model was fine-tuned from or judged against, if any."""
    tuning_study: str | None = None
    """The Optuna study whose best parameters it used, if any."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Training figures: env_steps, gradient_steps, final_loss, wall_seconds, ...
    A figure that does not exist (NaN, e.g. the loss of a run that never reached a
    gradient step) is left out: JSON has no NaN, and a null would make the card unreadable."""

    @field_validator("metrics")
    @classmethod
    def _only_finite(cls, metrics: dict[str, float]) -> dict[str, float]:
        return {name: value for name, value in metrics.items() if math.isfinite(value)}


class ModelCard(CardDraft):
    """Everything a model directory says about itself (`card.json`, format 2)."""

    card_format: Literal[2] = CARD_FORMAT
    """Version of this record's layout."""
    model_id: str = Field(min_length=1)
    """Unique id given at save time (a UUID hex); survives registration."""
    version: str | None = None
    """Registry version (`v7`); None until the directory is registered."""
    featurizer_version: int
    """The featurizer the network was trained on; loading under another one is refused."""
    network: dict[str, JsonValue]
    """Architecture (QNetwork.spec()): kind and shape, enough to rebuild it."""
    hyperparameters: dict[str, JsonValue]
    """The DQNConfig it was trained with (DQNConfig.to_dict())."""
    scenario_fingerprint: str | None = None
    """sha256 of the scenario's canonical JSON (same fingerprint, same world)."""
    weights_file: str = WEIGHTS_FILE
    """Name of the safetensors weights inside the directory."""
    onnx_file: str | None = ONNX_FILE
    """Name of the ONNX export for serving; None when not exported (checkpoints)."""
    files: dict[str, str]
    """sha256 of every model file by name (weights and ONNX); the card itself is not listed."""
    created_at: AwareDatetime
    """When the model directory was written (UTC)."""

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights file."""
        return self.files[self.weights_file]

    @property
    def onnx_sha256(self) -> str | None:
        """sha256 of the ONNX file, None when there is none."""
        return None if self.onnx_file is None else self.files.get(self.onnx_file)

    @property
    def content_sha256(self) -> str:
        """One hash over every model file's name and hash: the registry's identity of a model."""
        lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(self.files.items()))
        return hashlib.sha256(lines.encode()).hexdigest()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def scenario_fingerprint(scenario: Mapping[str, Any] | None) -> str | None:
    """sha256 of the scenario's canonical JSON, None without a scenario."""
    if scenario is None:
        return None
    canonical = json.dumps(scenario, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_card(directory: Path, card: ModelCard) -> Path:
    """The one writer: `card.json`, fsynced (the caller renames the directory into place)."""
    path = directory / CARD_FILE
    write_json_durably(path, card.model_dump(mode="json"))
    return path


def write_json_durably(path: Path, document: Mapping[str, Any]) -> None:
    """Write JSON to a temporary sibling, fsync it, rename it over `path`, fsync the directory."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """fsync a directory so a rename into it survives power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_card(directory: Path) -> ModelCard:
    """The one reader: `card.json`, or a format-1 `metadata.json`; CardError otherwise."""
    directory = Path(directory)
    card_path = directory / CARD_FILE
    if card_path.is_file():
        document = _read_json(card_path)
        try:
            return ModelCard.model_validate(document)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise CardError(
                f"{str(card_path)!r} is not a valid model card: {where}: {error['msg']}"
            ) from None
    legacy = directory / LEGACY_METADATA_FILE
    if legacy.is_file():
        return card_from_legacy(_read_json(legacy), legacy)
    raise CardError(f"{str(directory)!r} is not a model directory (no {CARD_FILE})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise CardError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{str(path)!r} is not valid JSON: {exc}") from exc


_LEGACY_KEYS = frozenset(
    {
        "artifact_format",
        "model_id",
        "model_version",
        "featurizer_version",
        "network",
        "dqn_config",
        "weights_file",
        "weights_sha256",
        "onnx_file",
        "onnx_sha256",
        "created_at",
        "training",
        "scenario",
        "data_window",
        "metrics",
    }
)


def card_from_legacy(document: Any, path: Path) -> ModelCard:
    """A format-1 `metadata.json` as a card; its free-form extras move under `training`."""
    if not isinstance(document, dict) or "network" not in document:
        raise CardError(f"{str(path)!r} is not dispatchloop model metadata")
    training = dict(document.get("training") or {})
    for key in sorted(set(document) - _LEGACY_KEYS):
        training[key] = document[key]
    weights_file = str(document.get("weights_file") or WEIGHTS_FILE)
    files = {weights_file: str(document.get("weights_sha256"))}
    onnx_file = document.get("onnx_file")
    if onnx_file:
        files[str(onnx_file)] = str(document.get("onnx_sha256"))
    window = document.get("data_window") or {}
    try:
        return ModelCard(
            model_id=str(document.get("model_id") or path.parent.name),
            model_version=document.get("model_version"),
            trainer="distill" if training.get("mode") == "distill" else "dqn",
            featurizer_version=int(document.get("featurizer_version") or 0),
            network=document["network"],
            hyperparameters=document.get("dqn_config") or {},
            training=training,
            data_window=DataWindow(start=window.get("start"), end=window.get("end"))
            if window.get("start") or window.get("end")
            else None,
            scenario=document.get("scenario"),
            scenario_fingerprint=scenario_fingerprint(document.get("scenario")),
            metrics=document.get("metrics") or {},
            weights_file=weights_file,
            onnx_file=str(onnx_file) if onnx_file else None,
            files=files,
            created_at=document.get("created_at") or datetime.fromtimestamp(0, UTC),
        )
    except (ValidationError, TypeError, ValueError) as exc:
        raise CardError(f"{str(path)!r} cannot be read as a model card: {exc}") from exc


def stray_files(directory: Path, card: ModelCard) -> list[str]:
    """Files that could hold a pickle (never loaded): reported, so an operator can remove them."""
    known = set(card.files)
    return sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and path.suffix.lower() in UNSAFE_SUFFIXES and path.name not in known
    )
