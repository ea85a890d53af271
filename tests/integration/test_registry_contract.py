"""The registry contract (registry/base.py), one suite run on SQLite and PostgreSQL.

Every test takes `store_url` (tests/conftest.py), parametrised over both backends
with a fresh database per test, as the replay-store contract suite does.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from registry_support import make_model, passing_record, rejecting_record

from dispatchloop.errors import InputError
from dispatchloop.events import ModelPromotedEvent
from dispatchloop.registry import (
    AliasChange,
    AliasConflictError,
    NoPassingDecisionError,
    NothingToRollBackError,
    SqlRegistry,
    VersionIntegrityError,
    VersionNotFoundError,
    load_version,
    open_registry,
)
from dispatchloop.replay.migrate import head_revision

pytestmark = pytest.mark.integration

ACTOR = "tester@host"


@pytest.fixture
def registry(store_url: str, tmp_path: Path) -> Iterator[SqlRegistry]:
    opened = open_registry(store_url, tmp_path / "registry")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def models(tmp_path: Path) -> list[Path]:
    return [make_model(tmp_path / f"model{i}", seed=i, onnx=i == 0) for i in range(3)]


def registered(registry: SqlRegistry, models: list[Path]) -> list[str]:
    """Register every model and attach a passing decision record to each."""
    versions = []
    for model in models:
        version = registry.register(model, actor=ACTOR).version
        registry.attach_decision(version, passing_record(version))
        versions.append(version)
    return versions


def flip_one_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_migrations_reach_0003(store_url: str, registry: SqlRegistry) -> None:
    assert head_revision() >= "0003"
    inspector = sa.inspect(registry.engine)
    tables = set(inspector.get_table_names())
    assert {"registry_versions", "registry_aliases", "registry_outbox"} <= tables
    assert "replay_events" in tables  # one database, one migration chain


def test_register_copies_verifies_and_numbers_versions(
    registry: SqlRegistry, models: list[Path]
) -> None:
    first = registry.register(models[0], actor=ACTOR)
    second = registry.register(models[1], actor=ACTOR)
    assert (first.version, second.version) == ("v1", "v2")
    assert first.card.version == "v1" and first.onnx_path is not None
    assert json.loads(first.card_path.read_text())["version"] == "v1"
    assert first.weights_path.read_bytes() == (models[0] / "model.safetensors").read_bytes()
    assert not os.access(first.weights_path, os.W_OK) or os.geteuid() == 0
    assert first.weights_path.stat().st_mode & 0o222 == 0, "version files are read-only"
    assert [v.version for v in registry.list_versions()] == ["v1", "v2"]
    assert registry.verify("v1").files == first.card.files
    assert not list((registry.root / ".staging").iterdir())


def test_register_is_idempotent_on_content(registry: SqlRegistry, models: list[Path]) -> None:
    first = registry.register(models[0], actor=ACTOR)
    again = registry.register(models[0], actor="someone-else")
    assert again.version == first.version and again.registered_by == ACTOR
    assert len(registry.list_versions()) == 1


def test_tampered_weights_are_refused_by_register_promote_and_load(
    registry: SqlRegistry, models: list[Path], tmp_path: Path
) -> None:
    version = registry.register(models[0], actor=ACTOR)
    registry.attach_decision("v1", passing_record("v1"))
    flip_one_byte(version.weights_path)
    with pytest.raises(VersionIntegrityError, match=r"sha256 of model\.safetensors"):
        registry.verify("v1")
    with pytest.raises(VersionIntegrityError):
        registry.promote("v1", actor=ACTOR, reason="gate passed")
    with pytest.raises(VersionIntegrityError):
        load_version(registry, "v1")
    assert registry.alias("champion") is None and registry.outbox() == []
    source = make_model(tmp_path / "tampered-source", seed=9)
    flip_one_byte(source / "model.safetensors")
    with pytest.raises(VersionIntegrityError, match="changed or corrupted"):
        registry.register(source, actor=ACTOR)
    assert len(registry.list_versions()) == 1


def test_a_half_written_version_is_refused(registry: SqlRegistry, models: list[Path]) -> None:
    version = registry.register(models[0], actor=ACTOR)
    assert version.onnx_path is not None
    version.onnx_path.unlink()
    with pytest.raises(VersionIntegrityError, match="missing"):
        registry.verify("v1")


class _Marker:
    """Unpickling this creates a marker file (what a malicious pickle would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))  # type: ignore[return-value]


def test_a_malicious_pickle_in_a_version_is_never_unpickled(
    registry: SqlRegistry, models: list[Path], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    payload = pickle.dumps(_Marker(str(marker)))
    version = registry.register(models[0], actor=ACTOR)
    (version.directory / "evil.pkl").write_bytes(payload)
    (version.directory / "model.pt").write_bytes(payload)
    (models[1] / "extra.pkl").write_bytes(payload)
    registry.attach_decision("v1", passing_record("v1"))
    report = registry.verify("v1")
    assert report.stray_files == ("evil.pkl", "model.pt")
    registry.promote("v1", actor=ACTOR, reason="gate passed")
    load_version(registry, "champion")
    second = registry.register(models[1], actor=ACTOR)
    assert not (second.directory / "extra.pkl").exists(), "stray files are not copied"
    assert not marker.exists(), "a pickle was unpickled"
    errors = registry.metrics.errors.labels("stray_file")._value.get()
    assert errors >= 3


def test_promote_requires_a_passing_decision_or_a_forced_reason(
    registry: SqlRegistry, models: list[Path]
) -> None:
    registry.register(models[0], actor=ACTOR)
    registry.attach_decision("v1", rejecting_record("v1"))
    with pytest.raises(NoPassingDecisionError):
        registry.promote("v1", actor=ACTOR, reason="")
    move = registry.promote("v1", actor="ops@host", reason="pilot by hand", force=True)
    assert move.entry.override and move.entry.actor == "ops@host"
    assert move.entry.reason == "pilot by hand"
    records = registry.decisions("v1")
    manual = [r for r in records if r.kind == "manual"]
    assert len(manual) == 1 and manual[0].record_id == move.entry.decision_record_id
    assert move.event.decision is not None
    record_path = Path(move.event.decision.record_uri.removeprefix("file://"))
    assert json.loads(record_path.read_text())["reasons"] == ["pilot by hand"]


def test_promotion_writes_alias_history_and_a_valid_event_together(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, _, _ = registered(registry, models)
    move = registry.promote(v1, actor=ACTOR, reason="all gates passed")
    event = ModelPromotedEvent.model_validate_json(registry.outbox()[0].payload)
    assert event == move.event
    assert event.key == "champion" and event.scope == "*" and event.model_version == v1
    assert event.previous_version is None and event.traffic_share == 1.0
    assert event.lineage.trainer == "dqn" and event.lineage.events == 1200
    assert event.lineage.study == "nightly-test"
    assert event.metrics == {"sim_reward_delta": 3.2}
    assert event.decision is not None and event.decision.verdict == "promote"
    assert Path(event.decision.record_uri.removeprefix("file://")).is_file()
    assert event.onnx_uri is not None and event.onnx_sha256 is not None
    assert registry.history("champion")[0].event_id == str(event.event_id)
    assert registry.outbox_backlog() == 1
    assert registry.get("champion").version == v1


def test_scoped_aliases_resolve_company_first_then_star(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, v2, _ = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="fleet-wide")
    move = registry.promote(v2, actor=ACTOR, reason="pilot", scope="acme-medical")
    assert move.event.key == "acme-medical/champion" and move.event.previous_version is None
    assert registry.get("champion", company="acme-medical").version == v2
    assert registry.get("champion", company="other-co").version == v1
    assert registry.get("champion").version == v1
    assert [e.to_version for e in registry.history("champion", scope="acme-medical")] == [v2]
    with pytest.raises(VersionNotFoundError):
        registry.get("challenger", company="acme-medical")


def test_challenger_share_and_champion_remainder(registry: SqlRegistry, models: list[Path]) -> None:
    v1, v2, _ = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="first")
    canary = registry.promote(v2, actor=ACTOR, reason="canary", alias="challenger",
                              traffic_share=0.1)  # fmt: skip
    assert canary.event.traffic_share == 0.1 and canary.event.key == "challenger"
    moved = registry.promote(v2, actor=ACTOR, reason="wider", alias="challenger",
                             traffic_share=0.25)  # fmt: skip
    assert moved.event.event_type == "model.traffic_changed"


def test_compare_and_swap_refuses_a_stale_expected_previous(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, v2, v3 = registered(registry, models)
    registry.set_alias("champion", v1, actor=ACTOR, reason="r", expected_previous=None)
    registry.set_alias("champion", v2, actor=ACTOR, reason="r", expected_previous=v1)
    with pytest.raises(AliasConflictError, match="points to v2"):
        registry.set_alias("champion", v3, actor="stale-leader", reason="r", expected_previous=v1)
    with pytest.raises(AliasConflictError):
        registry.set_alias("champion", v3, actor="stale-leader", reason="r", expected_previous=None)
    assert registry.get("champion").version == v2
    assert len(registry.history("champion")) == 2 and len(registry.outbox()) == 2


def _canary_running(registry: SqlRegistry, models: list[Path]) -> list[str]:
    """v1 champion, v2 challenger at 10 %."""
    v1, v2, v3 = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="first")
    registry.promote(v2, actor=ACTOR, reason="canary", alias="challenger", traffic_share=0.1)
    return [v1, v2, v3]


def _canary_promotion(v1: str, v2: str, *, challenger_now: str | None = None) -> list[AliasChange]:
    """What a won canary does: champion := v2 (share 1), challenger v2 := share 0."""
    return [
        AliasChange(alias="champion", version=v2, expected_previous=v1, traffic_share=1.0,
                    event_type="model.promoted"),
        AliasChange(alias="challenger", version=v2, expected_previous=challenger_now or v2,
                    traffic_share=0.0, event_type="model.traffic_changed"),
    ]  # fmt: skip


def test_set_aliases_moves_all_or_none(registry: SqlRegistry, models: list[Path]) -> None:
    v1, v2, v3 = _canary_running(registry, models)
    moves = registry.set_aliases(_canary_promotion(v1, v2), actor=ACTOR, reason="canary won")
    assert [(m.event.key, m.event.event_type) for m in moves] == [
        ("champion", "model.promoted"),
        ("challenger", "model.traffic_changed"),
    ]
    champion, challenger = registry.alias("champion"), registry.alias("challenger")
    assert champion is not None and challenger is not None
    assert (champion.version, challenger.version, challenger.traffic_share) == (v2, v2, 0.0)
    queued = [ModelPromotedEvent.model_validate_json(r.payload) for r in registry.outbox()]
    assert [e.event_id for e in queued[-2:]] == [m.event.event_id for m in moves]
    before = (registry.history("champion"), registry.history("challenger"), registry.outbox())
    stale = _canary_promotion(v2, v3, challenger_now=v3)  # champion matches; challenger does not
    with pytest.raises(AliasConflictError, match="challenger of scope"):
        registry.set_aliases(stale, actor="stale-leader", reason="r")
    assert registry.get("champion").version == v2  # the first move was rolled back with it
    after = (registry.history("champion"), registry.history("challenger"), registry.outbox())
    assert after == before
    with pytest.raises(InputError, match="at most once"):
        registry.set_aliases(_canary_promotion(v2, v3)[:1] * 2, actor=ACTOR, reason="r")
    with pytest.raises(InputError, match="at least one change"):
        registry.set_aliases([], actor=ACTOR, reason="r")


_KILLED_MID_PAIR = textwrap.dedent(
    """
    import sys
    from dispatchloop.registry import AliasChange, open_registry
    from dispatchloop.registry.base import crash_checkpoint
    url, root, point, v1, v2 = sys.argv[1:6]
    registry = open_registry(url, root, checkpoint=crash_checkpoint(point))
    registry.set_aliases([
        AliasChange(alias="champion", version=v2, expected_previous=v1, traffic_share=1.0,
                    event_type="model.promoted"),
        AliasChange(alias="challenger", version=v2, expected_previous=v2, traffic_share=0.0,
                    event_type="model.traffic_changed"),
    ], actor="killed", reason="canary won")
    print("survived", flush=True)
    """
)


@pytest.mark.parametrize(
    ("point", "moved"),
    [
        ("move.outbox_written:1", False),  # the champion's move complete, the pair is not
        ("move.outbox_written:2", False),  # both written, not committed
        ("move.committed:1", True),  # committed, killed before returning
    ],
)
def test_a_process_killed_inside_set_aliases_leaves_both_moves_or_neither(
    registry: SqlRegistry, models: list[Path], store_url: str, point: str, moved: bool
) -> None:
    """kill -9 (the registry's crash hook) at each point of a canary promotion's pair."""
    v1, v2, _ = _canary_running(registry, models)
    outbox = len(registry.outbox())
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_MID_PAIR, store_url, str(registry.root), point, v1, v2],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr
    champion, challenger = registry.alias("champion"), registry.alias("challenger")
    assert champion is not None and challenger is not None
    expected = (v2, 0.0, outbox + 2) if moved else (v1, 0.1, outbox)
    assert (champion.version, challenger.traffic_share, len(registry.outbox())) == expected
    assert challenger.version == v2


_RACER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dispatchloop.registry import AliasConflictError, open_registry
    url, root, index, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    registry = open_registry(url, root)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    start = float(go.read_text())
    for round_ in range(ROUNDS):
        time.sleep(max(0.0, start + round_ * 0.2 - time.time()))
        try:
            registry.set_alias("champion", ["v2", "v3"][index], actor=f"p{index}",
                               reason="race", scope=f"race{round_}", expected_previous="v1")
            print(round_, "won", flush=True)
        except AliasConflictError:
            print(round_, "conflict", flush=True)
    registry.close()
    """
)
ROUNDS = 4


def test_concurrent_set_alias_from_two_processes_exactly_one_wins(
    registry: SqlRegistry, models: list[Path], store_url: str, tmp_path: Path
) -> None:
    """Round r: both processes move scope race<r> from v1, at the same instant; one wins."""
    v1, _, _ = registered(registry, models)
    for round_ in range(ROUNDS):
        registry.set_alias("champion", v1, actor=ACTOR, reason="start", scope=f"race{round_}")
    go = tmp_path / "go"
    script = _RACER.replace("ROUNDS", str(ROUNDS))
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, store_url, str(registry.root), str(i), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None and racer.stdout.readline().strip() == "ready"
        staged = tmp_path / "go.tmp"
        staged.write_text(str(time.time() + 0.3))
        staged.rename(go)  # atomic: a racer never reads a half-written start time
        outputs = [racer.communicate(timeout=60) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait(timeout=10)
    results: dict[str, list[str]] = {}
    for racer, (out, err) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, err
        for line in filter(None, out.split("\n")):
            round_, outcome = line.split()
            results.setdefault(round_, []).append(outcome)
    assert len(results) == ROUNDS
    for round_, outcomes in results.items():
        assert sorted(outcomes) == ["conflict", "won"], (round_, outcomes)
        assert len(registry.history("champion", scope=f"race{round_}")) == 2
    assert len(registry.outbox()) == 2 * ROUNDS


def test_history_is_append_only(registry: SqlRegistry, models: list[Path]) -> None:
    v1, v2, _ = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="a")
    registry.promote(v2, actor=ACTOR, reason="b")
    before = registry.history("champion")
    for statement in (
        "UPDATE registry_alias_history SET reason = 'rewritten'",
        "DELETE FROM registry_alias_history",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), registry.engine.begin() as c:
            c.exec_driver_sql(statement)
    assert registry.history("champion") == before
    assert [(e.from_version, e.to_version) for e in before] == [(None, v1), (v1, v2)]


def test_rollback_after_two_promotions_lands_on_the_first(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, v2, v3 = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="a")
    registry.promote(v2, actor=ACTOR, reason="b")
    back = registry.rollback("champion", actor="ops", reason="late rate doubled")
    assert back.entry.to_version == v1 and back.entry.from_version == v2
    assert back.event.event_type == "model.rolled_back" and back.event.model_version == v1
    assert back.event.decision is not None and back.event.decision.verdict == "reject"
    with pytest.raises(NothingToRollBackError):
        registry.rollback("champion", actor="ops", reason="again")
    registry.promote(v2, actor=ACTOR, reason="fixed")
    registry.promote(v3, actor=ACTOR, reason="c")
    assert registry.rollback("champion", actor="ops", reason="x").entry.to_version == v2
    assert registry.rollback("champion", actor="ops", reason="y").entry.to_version == v1
    assert registry.get("champion").version == v1
    assert [e.event_type for e in registry.history("champion")].count("model.rolled_back") == 3


def test_mark_published_and_failures_leave_rows_pending(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, v2, _ = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="a")
    registry.promote(v2, actor=ACTOR, reason="b")
    rows = registry.pending_outbox()
    registry.record_publish_failure([rows[0].id], "broker down")
    assert registry.pending_outbox()[0].attempts == 1
    registry.mark_published([rows[0].id], rows[0].published_at or registry.history()[0].at)
    assert [r.id for r in registry.pending_outbox()] == [rows[1].id]
    assert registry.outbox_backlog() == 1


def test_a_stale_rollback_is_fenced_and_metrics_come_back_at_start(
    registry: SqlRegistry, models: list[Path], store_url: str
) -> None:
    v1, v2, _ = registered(registry, models)
    registry.promote(v1, actor=ACTOR, reason="a")
    registry.promote(v2, actor=ACTOR, reason="b")
    with pytest.raises(AliasConflictError):
        registry.rollback("champion", actor="stale", reason="r", expected_current=v1)
    assert registry.get("champion").version == v2
    reopened = open_registry(store_url, registry.root)
    try:
        info = reopened.metrics.champion_info.labels("*", v2)._value.get()
        assert info == 1 and reopened.metrics.outbox_backlog._value.get() == 2
    finally:
        reopened.close()


def test_what_was_serving_at_a_past_moment_and_why(
    registry: SqlRegistry, models: list[Path]
) -> None:
    v1, v2, v3 = registered(registry, models)
    before = registry.promote(v1, actor=ACTOR, reason="first").entry.at
    registry.promote(v2, actor="daemon", reason="gates passed")
    registry.promote(v3, actor=ACTOR, reason="pilot", scope="acme-medical")
    between = registry.history("champion", scope=None)[-1].at  # the pilot's move
    registry.rollback("champion", actor="ops", reason="late rate")
    assert registry.serving_at("champion", before.replace(year=2000)) is None
    assert registry.serving_at("champion", before).to_version == v1  # type: ignore[union-attr]
    then = registry.serving_at("champion", between)
    assert then is not None and (then.to_version, then.actor) == (v2, "daemon")
    assert then.decision_record_id in {r.record_id for r in registry.decisions(v2)}
    piloted = registry.serving_at("champion", between, company="acme-medical")
    assert piloted is not None and (piloted.to_version, piloted.reason) == (v3, "pilot")
    assert registry.serving_at("champion", between, company="other").to_version == v2  # type: ignore[union-attr]


def test_stale_staging_left_by_a_killed_register_is_swept(
    registry: SqlRegistry, models: list[Path]
) -> None:
    stale = registry.root / ".staging" / "dead"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    os.utime(stale, (time.time() - 7 * 3600, time.time() - 7 * 3600))
    fresh = registry.root / ".staging" / "alive"
    fresh.mkdir()
    registry.register(models[0], actor=ACTOR)
    assert not stale.exists() and fresh.exists()
