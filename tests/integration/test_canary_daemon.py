"""The canary through the real `dispatchloop run`: a worse challenger is rolled back and a
better one promoted, automatically, each with a canary decision record and its event on
the models topic (real broker, real registry and outbox, SQLite and PostgreSQL).

The registry holds champion v1 and challenger v2 at a 10 % share; outcome events
attributed to each version (action.model_version, as serving stamps them) are written
through the store's write API with decided_at after the canary's start. No cycle
triggers (min_events is out of reach): only the canary acts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from canary_support import ACTOR, canary_started, outcome_events, start_canary, write_events
from ingest_support import (
    create_topic,
    http_get,
    log_lines,
    metrics_port,
    read_topic_all,
    stop,
    wait_until,
)
from registry_support import make_model, passing_record
from test_run_daemon import NotifySocket, run_env, start_run

from dispatchloop.events import DecisionRecord
from dispatchloop.registry import open_registry
from dispatchloop.registry.base import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def models_events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in read_topic_all(bootstrap, f"{topic}.models")]


def record_of(registry: ModelRegistry, version: str, record_id: str | None) -> DecisionRecord:
    return next(r for r in registry.decisions(version) if r.record_id == record_id)


def test_the_daemon_rolls_back_a_worse_canary_and_promotes_a_better_one(
    kafka_bootstrap: str, topic_name: str, store_url: str, tmp_path: Path, notify: NotifySocket
):
    create_topic(kafka_bootstrap, topic_name, 1)
    data = tmp_path / "data"
    registry = open_registry(store_url, data / "registry")
    rng = np.random.default_rng(5)
    try:
        v1 = registry.register(make_model(tmp_path / "m1", 1), actor=ACTOR).version
        registry.attach_decision(v1, passing_record(v1))
        registry.promote(v1, actor=ACTOR, reason="first champion")
        v2 = start_canary(registry, tmp_path, 2, v1)
        started = canary_started(registry)
        write_events(
            store_url,
            outcome_events(rng, v1, 900, started, late=0.1, cost_scale=1.0)
            + outcome_events(rng, v2, 300, started, late=0.5, cost_scale=2.0),
        )
        env = run_env(
            kafka_bootstrap, topic_name, store_url, data, notify,
            min_events="1000000", canary_check_interval_s="1", canary_min_decisions="100",
            canary_planned_decisions="2000",
        )  # fmt: skip
        log = tmp_path / "run.log"
        process = start_run(env, log, None)
        try:
            port = metrics_port(log, timeout_s=60)

            def moved(alias: str, version: str) -> bool:
                state = registry.alias(alias)  # type: ignore[arg-type]
                return state is not None and state.version == version

            # worse: the challenger alias goes back to the champion's version, share 0
            wait_until(lambda: moved("challenger", v1), 60, "the canary's rollback")
            rollback = registry.history("challenger")[-1]
            assert (rollback.event_type, rollback.traffic_share) == ("model.rolled_back", 0.0)
            assert rollback.actor == "daemon" and registry.alias("champion").version == v1
            record = record_of(registry, v2, rollback.decision_record_id)
            assert (record.kind, record.verdict, record.champion) == ("canary", "reject", v1)
            reward = next(g for g in record.gates if g.name == "canary.reward")
            assert reward.passed is False and reward.ci is not None and reward.ci[1] < 0
            assert "300 challenger vs 900 champion decisions" in reward.detail
            wait_until(lambda: registry.outbox_backlog() == 0, 30, "the rollback published")
            event = next(
                e
                for e in models_events(kafka_bootstrap, topic_name)
                if e["event_type"] == "model.rolled_back"
            )
            assert (event["event_type"], event["alias"], event["model_version"]) == (
                "model.rolled_back", "challenger", v1
            )  # fmt: skip
            assert event["traffic_share"] == 0.0 and event["decision"]["verdict"] == "reject"
            assert Path(event["decision"]["record_uri"].removeprefix("file://")).is_file()

            # better: a new canary v3, promoted to champion, then its share ends
            v3 = start_canary(registry, tmp_path, 3, v1)
            started = canary_started(registry)
            write_events(
                store_url,
                outcome_events(rng, v1, 900, started, late=0.1, cost_scale=1.0)
                + outcome_events(rng, v3, 300, started, late=0.0, cost_scale=0.4),
            )
            wait_until(lambda: moved("champion", v3), 60, "the canary's promotion")
            wait_until(
                lambda: registry.alias("challenger").traffic_share == 0.0, 30, "the share's end"
            )
            promotion = registry.history("champion")[-1]
            record = record_of(registry, v3, promotion.decision_record_id)
            assert (record.kind, record.verdict, record.champion) == ("canary", "promote", v1)
            assert all(gate.passed for gate in record.gates)
            ended = registry.history("challenger")[-1]
            assert (ended.event_type, ended.to_version) == ("model.traffic_changed", v3)
            assert ended.decision_record_id == record.record_id

            wait_until(lambda: registry.outbox_backlog() == 0, 30, "the promotion published")
            events = models_events(kafka_bootstrap, topic_name)

            def published(alias: str) -> list[tuple[str, str, float]]:
                return [  # ordered per key (the alias), not across keys
                    (e["event_type"], e["model_version"], e["traffic_share"])
                    for e in events
                    if e["alias"] == alias
                ]

            assert published("champion") == [
                ("model.promoted", v1, 1.0), ("model.promoted", v3, 1.0)
            ]  # fmt: skip
            assert published("challenger") == [
                ("model.promoted", v2, 0.1),
                ("model.rolled_back", v1, 0.0),
                ("model.promoted", v3, 0.1),
                ("model.traffic_changed", v3, 0.0),
            ]

            _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            text = body.decode()
            assert 'dispatchloop_canary_verdicts_total{verdict="rollback"} 1.0' in text
            assert 'dispatchloop_canary_verdicts_total{verdict="promote"} 1.0' in text
            assert "dispatchloop_canary_active 0.0" in text
            assert f'dispatchloop_champion_info{{version="{v3}"}} 1.0' in text
            messages = [line.get("msg", "") for line in log_lines(log)]
            assert any(f"canary {v2} (10%) vs champion {v1}: rolled_back" in m for m in messages)
            assert any(f"canary {v3} (10%) vs champion {v1}: promoted" in m for m in messages)
            assert stop(process, timeout_s=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    finally:
        registry.close()
