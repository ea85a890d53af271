"""Model versions with cards, scoped champion/challenger aliases with history, atomic
promotion and rollback, and the transactional outbox that publishes promotion events
to `dispatch.models`. The contract is `base.ModelRegistry`; `open_registry` opens the
SQL implementation in the replay store's database.

Importing this package never imports torch (serving reads the registry without it):
`load_model` imports the torch side only when called.
"""

from __future__ import annotations

from pathlib import Path

from dispatchloop.registry.base import (
    UNSET,
    AliasChange,
    AliasConflictError,
    AliasMove,
    AliasState,
    AliasUnchangedError,
    HistoryEntry,
    ModelRegistry,
    ModelVersion,
    NoPassingDecisionError,
    NothingToRollBackError,
    OutboxRow,
    RegistryUnavailableError,
    VerifyReport,
    VersionIntegrityError,
    VersionNotFoundError,
)
from dispatchloop.registry.metrics import RegistryMetrics
from dispatchloop.registry.outbox import DrainResult, OutboxPublisher, make_producer
from dispatchloop.registry.sql import SqlRegistry, open_registry
from dispatchloop.rl.card import CardDraft, DataWindow, ModelCard, read_card

__all__ = [
    "UNSET",
    "AliasChange",
    "AliasConflictError",
    "AliasMove",
    "AliasState",
    "AliasUnchangedError",
    "CardDraft",
    "DataWindow",
    "DrainResult",
    "HistoryEntry",
    "ModelCard",
    "ModelRegistry",
    "ModelVersion",
    "NoPassingDecisionError",
    "NothingToRollBackError",
    "OutboxPublisher",
    "OutboxRow",
    "RegistryMetrics",
    "RegistryUnavailableError",
    "SqlRegistry",
    "VerifyReport",
    "VersionIntegrityError",
    "VersionNotFoundError",
    "load_version",
    "make_producer",
    "open_registry",
    "read_card",
]


def load_version(registry: ModelRegistry, ref: str, *, company: str | None = None) -> object:
    """Verify a version (or the alias `ref` for `company`) and load it with torch.

    Returns `rl.artifacts.LoadedModel`; a tampered or half-written version raises
    `VersionIntegrityError` before any weight is read."""
    from dispatchloop.rl.artifacts import load_model  # noqa: PLC0415 - torch, on demand

    version = registry.get(ref, company=company)
    registry.verify(version.version)
    return load_model(Path(version.directory))
