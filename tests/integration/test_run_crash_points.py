"""kill -9 of the shipped `dispatchloop run` (real gate, registry and outbox) in each stage
of a cycle, then a restart: no half-written version, alias/history/outbox agree, no
directory the database does not know, the killed cycle aborted, the next one completes,
every promotion event on the models topic once after dedup by event_id.

The process kills itself through DISPATCHLOOP_TEST_CRASH_AT (registry.base.crash_checkpoint):
`cycle.<stage>` when the runner enters fit, train or judge; a registry point inside
register (directory renamed, row not committed), promote (alias, history and outbox row
written, transaction not committed) and publish (sent, not marked published).

The suite runs two points: `train` (a child killed mid-cycle) and `promote` (a registry
transaction killed before its commit). All six run with
DISPATCHLOOP_TEST_ALL_CRASH_POINTS=1, as `benchmarks/crash_points.py` does: 5 min 14 s
on the loaded 2-core host (load ~3.5), 40–67 s a point; 41–76 s a point on
2026-12-02 (benchmarks/BENCHMARKS.md, "Crash points"). The other points are also
covered more cheaply: a kill inside register by the registry's stale-staging sweep
test, inside publish by test_registry_publication's 20 seeded kills.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ingest_support import create_topic, read_topic_all, stop, wait_until
from loop_support import N_EVENTS
from test_run_daemon import NotifySocket, cycles_of, produce, run_env, start_run

from dispatchloop.registry import open_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINISHED = ("promoted", "rejected", "insufficient_evidence")
TRIGGER = {"interval_s": "2"}
FAST = {"offline_steps": "50", "sim_steps": "0"}
POINTS = {
    "fit": "cycle.fit",
    "train": "cycle.train",
    "judge": "cycle.judge",
    "register": "register.renamed",
    "promote": "move.outbox_written",
    "publish": "publish.sent",
}

IN_THE_SUITE = ("train", "promote")


def _points() -> list[str]:
    if os.environ.get("DISPATCHLOOP_TEST_ALL_CRASH_POINTS") == "1":
        return list(POINTS)
    return list(IN_THE_SUITE)


def _short(env: dict[str, str]) -> dict[str, str]:
    env["DISPATCHLOOP_GATE__OPE_BOOTSTRAP"] = "300"
    return env


@pytest.mark.parametrize("stage", _points())
def test_kill_9_in_each_stage_then_restart_leaves_the_registry_consistent(
    stage: str, kafka_bootstrap: str, topic_name: str, sqlite_url: str, tmp_path: Path
):
    create_topic(kafka_bootstrap, topic_name, 1)
    create_topic(kafka_bootstrap, f"{topic_name}.models", 1)  # read back even if none promoted
    produce(kafka_bootstrap, topic_name, N_EVENTS)
    data = tmp_path / "data"
    log = tmp_path / "run.log"
    notify = NotifySocket(tmp_path / "notify")
    # The killed cycle must reach promote for the last two points: the budget of the real
    # end-to-end test, whose first candidate the gate promotes. Elsewhere any verdict will do.
    promotes = stage in ("promote", "publish")
    budget = {"offline_steps": "500", "sim_steps": "8000"} if promotes else FAST
    try:
        env = _short(
            run_env(kafka_bootstrap, topic_name, sqlite_url, data, notify, **budget, **TRIGGER)
        )
        env["DISPATCHLOOP_TEST_CRASH_AT"] = POINTS[stage]
        process = start_run(env, log, None)
        try:
            code = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        assert code == -9, f"run did not reach {POINTS[stage]}: {log.read_text()[-2000:]}"
        (killed,) = cycles_of(sqlite_url)
        assert (killed.outcome, killed.stage) == ("running", stage)

        env = _short(
            run_env(kafka_bootstrap, topic_name, sqlite_url, data, notify, **FAST, **TRIGGER)
        )
        process = start_run(env, log, None)
        try:
            wait_until(
                lambda: any(c.outcome in FINISHED for c in cycles_of(sqlite_url)),
                300,
                "the next cycle",
            )
            assert stop(process, timeout_s=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    finally:
        notify.close()

    cycles = {c.id: c for c in cycles_of(sqlite_url)}
    assert cycles[killed.id].outcome == "aborted"
    assert f"during stage {stage}" in cycles[killed.id].reasons[0]
    assert any(c.outcome in FINISHED and c.id > killed.id for c in cycles.values())

    registry = open_registry(sqlite_url, data / "registry")
    try:
        versions = {v.version for v in registry.list_versions()}
        for version in versions:
            registry.verify(version)  # complete and matching its hashes
        known = versions | {".orphans"}
        root = data / "registry"
        strays = [p.name for p in root.iterdir() if p.name not in known and p.name[0] != "."]
        assert strays == [], "a directory the database does not know"
        champion = registry.alias("champion")
        history = registry.history("champion")
        outbox = {row.event_id: row for row in registry.outbox()}
        assert {entry.event_id for entry in history} == set(outbox)
        if champion is None:
            assert history == []
        else:
            assert history and history[-1].to_version == champion.version
        for entry in history:
            payload = json.loads(outbox[entry.event_id].payload)
            assert payload["model_version"] == entry.to_version
        assert all(row.published_at is not None for row in outbox.values())
    finally:
        registry.close()
    if stage == "register":
        assert list((root / ".orphans").iterdir()), "the killed rename was swept aside"

    events = [
        json.loads(r.value)
        for r in read_topic_all(kafka_bootstrap, f"{topic_name}.models", idle_ms=1_500)
    ]
    by_id = {e["event_id"]: e for e in events}
    assert set(by_id) == set(outbox), "every promotion published, nothing else"
    assert [by_id[entry.event_id]["model_version"] for entry in history] == [
        entry.to_version for entry in history
    ]
