"""Stages `register`, `promote` and `publish` on the model registry, as the cycle calls them.

Adapters from the loop's protocols (`pipeline.protocols`) to the registry's library:
the registry keeps its own guarantees (atomic install, compare-and-swap alias moves
with their outbox rows in one transaction); these only decide what the loop records.
"""

from __future__ import annotations

from pathlib import Path

from dispatchloop.errors import TransientError
from dispatchloop.events import DecisionRecord
from dispatchloop.registry.base import ModelRegistry
from dispatchloop.registry.outbox import OutboxPublisher

DAEMON_ACTOR = "daemon"


class RegistryRegistrar:
    """The cycle's view of the registry's write side (the `Registrar` protocol)."""

    def __init__(self, registry: ModelRegistry, actor: str = DAEMON_ACTOR) -> None:
        self._registry = registry
        self._actor = actor

    def champion(self) -> str | None:
        state = self._registry.alias("champion")
        return None if state is None else state.version

    def register(self, model_dir: Path, record: DecisionRecord) -> str:
        """Install the candidate, then keep its record under the version it now has."""
        version = self._registry.register(model_dir, actor=self._actor).version
        self._registry.attach_decision(version, record.model_copy(update={"candidate": version}))
        return version

    def promote(self, version: str, record: DecisionRecord, expected_previous: str | None) -> None:
        """Champion := version, only if it still is `expected_previous` (the leader's fence)."""
        reasons = "; ".join(record.reasons) or "all gates passed"
        self._registry.promote(
            version,
            actor=self._actor,
            reason=f"gate {record.record_id}: {reasons}"[:500],
            expected_previous=expected_previous,
        )


class OutboxRelay:
    """The `Publisher` protocol over the registry's outbox publisher."""

    def __init__(self, publisher: OutboxPublisher) -> None:
        self._publisher = publisher

    def publish_pending(self) -> int:
        result = self._publisher.drain_once()
        if result.error is not None:
            raise TransientError(
                f"{result.backlog} promotion events wait for the broker: {result.error}"
            )
        return result.published
