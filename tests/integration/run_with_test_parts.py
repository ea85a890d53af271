"""`dispatchloop run` with the in-memory judge and registry of loop_support, and a publisher
that puts one JSON record per promotion on the models topic — a real process for the
end-to-end tests until the real gate (#12) and registry/outbox (#11) are merged.

Usage: python run_with_test_parts.py VERDICT[,VERDICT…]   (settings from DISPATCHLOOP_*)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from loop_support import MemoryRegistry, ScriptedJudge

from dispatchloop.daemon.run import LoopParts, run_daemon
from dispatchloop.logs import configure_logging
from dispatchloop.replay.base import ReplayStore
from dispatchloop.settings import Settings, load_settings


@dataclass
class KafkaTestPublisher:
    settings: Settings
    registry: MemoryRegistry
    sent: set[str] = field(default_factory=set)
    producer: Any = None

    def publish_pending(self) -> int:
        with self.registry.lock:
            pending = [v for v in self.registry.outbox if v not in self.sent]
        if not pending:
            return 0
        if self.producer is None:
            self.producer = KafkaProducer(**self.settings.kafka.client_options(), acks="all")
        for version in pending:
            body = {"event_type": "model.promoted", "model_version": version}
            self.producer.send(self.settings.kafka.models_topic, json.dumps(body).encode())
        self.producer.flush(timeout=30)
        self.sent.update(pending)
        return len(pending)


def main() -> None:
    verdicts = sys.argv[1].split(",")
    settings = load_settings()
    configure_logging(settings)

    def parts(settings: Settings, _store: ReplayStore, _metrics: object) -> LoopParts:
        registry = MemoryRegistry()
        return LoopParts(
            judge=ScriptedJudge(verdicts),  # type: ignore[arg-type]
            registrar=registry,
            publisher=KafkaTestPublisher(settings, registry),
        )

    sys.exit(run_daemon(settings, parts))


if __name__ == "__main__":
    main()
