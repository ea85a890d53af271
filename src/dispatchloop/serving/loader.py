"""Load a model version for serving, without torch: verify first, then build the scorer.

Two sources, one rule: nothing is built from a file before it has been checked.
- **A registry version** (`load_from_registry`): the registry's own `verify`
  re-hashes every file against the hashes recorded at registration and checks
  the featurizer version (registry/files.py, torch-free).
- **A promotion event** (`load_from_event`): the event names the files by
  `file://` URI and carries their sha256 and the featurizer version. The card
  must agree with the event (same hashes, same version), every file must hash
  to what the card says (the registry's `check_files`, the same check as
  above), and the featurizer version must be the one this code computes.

Either way a refusal is a `ModelRefusedError` whose `reason` is a short code for
the load-failure metric; the caller keeps the model it has. The scorer is the
network's NumPy forward pass (`decisions.scorer.CandidateScorer`) built from
`safetensors.numpy`; the demand map is rebuilt from the pickup points of the
scenario stored in the card (featurizer v2's coverage features need it).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from safetensors import SafetensorError
from safetensors.numpy import load_file

from dispatchloop.decisions.featurizer import FEATURIZER_VERSION, demand_map
from dispatchloop.decisions.scorer import CandidateScorer, ScorerSpecError
from dispatchloop.errors import InputError
from dispatchloop.events import ModelPromotedEvent
from dispatchloop.registry.base import ModelRegistry, VersionIntegrityError
from dispatchloop.registry.files import check_featurizer, check_files
from dispatchloop.rl.card import CardError, ModelCard, read_card
from dispatchloop.serving.dispatcher import ServedModel

REFUSAL_REASONS = ("integrity", "featurizer", "mismatch", "card", "unloadable")
"""The `reason` label values of a refused load (metric `..._model_load_failures_total`)."""


class ModelRefusedError(InputError):
    """A version was not loaded (files, card, event or featurizer disagree); keep the old one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """One of REFUSAL_REASONS."""


def load_from_registry(
    registry: ModelRegistry, ref: str, *, company: str | None = None
) -> ServedModel:
    """A version by name or alias, verified by the registry, as a servable model."""
    version = registry.get(ref, company=company)
    try:
        registry.verify(version.version)
    except VersionIntegrityError as exc:
        raise ModelRefusedError(_integrity_reason(exc), str(exc)) from exc
    return build_served_model(version.directory, version.card, version.version)


def load_from_event(event: ModelPromotedEvent) -> ServedModel:
    """The version a promotion event names, after every check the wire contract asks for."""
    what = f"version {event.model_version} ({event.event_type} of {event.key})"
    if event.featurizer_version != FEATURIZER_VERSION:
        raise ModelRefusedError(
            "featurizer",
            f"{what} expects featurizer version {event.featurizer_version}, "
            f"this code computes version {FEATURIZER_VERSION}",
        )
    directory = _local_path(event.card_uri, what).parent
    card = _read_card(directory, what)
    _check_event_matches_card(event, card, directory, what)
    try:
        check_files(directory, card.files, what)
        check_featurizer(card, what)
    except VersionIntegrityError as exc:
        raise ModelRefusedError(_integrity_reason(exc), str(exc)) from exc
    return build_served_model(directory, card, event.model_version)


def build_served_model(directory: Path, card: ModelCard, version: str) -> ServedModel:
    """Scorer and demand map from an already verified directory (call only after a check)."""
    what = f"version {version} in {directory}"
    scenario = card.scenario or {}
    points = scenario.get("pickup_points")
    if not isinstance(points, list) or not points:
        raise ModelRefusedError(
            "card", f"{what}: the card has no scenario pickup_points to rebuild the demand map"
        )
    try:
        tensors = load_file(str(directory / card.weights_file))
        scorer = CandidateScorer.from_state(tensors, dict(card.network))
        demand = demand_map(points)  # type: ignore[arg-type]  # JSON lists of [lat, lon]
    except (SafetensorError, OSError, ScorerSpecError, ValueError, TypeError) as exc:
        raise ModelRefusedError("unloadable", f"{what} cannot be loaded: {exc}") from exc
    return ServedModel(version=version, policy=card.trainer, scorer=scorer, demand=demand)


def _check_event_matches_card(
    event: ModelPromotedEvent, card: ModelCard, directory: Path, what: str
) -> None:
    """The event's URIs, hashes and version must describe the card's files, nothing else."""
    problems = []
    if _local_path(event.artifact_uri, what) != directory / card.weights_file:
        problems.append("artifact_uri is not the card's weights file")
    if event.sha256 != card.weights_sha256:
        problems.append("sha256 differs from the card's weights hash")
    if event.onnx_sha256 != card.onnx_sha256:
        problems.append("onnx_sha256 differs from the card's ONNX hash")
    onnx_path = None if event.onnx_uri is None else _local_path(event.onnx_uri, what)
    if card.onnx_file is not None and onnx_path not in (None, directory / card.onnx_file):
        problems.append("onnx_uri is not the card's ONNX file")
    if card.version is not None and card.version != event.model_version:
        problems.append(f"the card says version {card.version}")
    if card.featurizer_version != event.featurizer_version:
        problems.append(f"the card says featurizer version {card.featurizer_version}")
    if problems:
        raise ModelRefusedError("mismatch", f"{what}: {'; '.join(problems)}")


def _read_card(directory: Path, what: str) -> ModelCard:
    try:
        return read_card(directory)
    except CardError as exc:
        raise ModelRefusedError("card", f"{what}: {exc}") from exc


def _local_path(uri: str, what: str) -> Path:
    """A `file://` URI as a path; other schemes are not served from here."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ModelRefusedError("mismatch", f"{what}: {uri!r} is not a local file:// URI")
    return Path(unquote(parsed.path))


def _integrity_reason(exc: VersionIntegrityError) -> str:
    return "featurizer" if "featurizer version" in str(exc) else "integrity"
