"""The loop's rows (migration 0004) and `cycles list|show`, `retrain`, on both backends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dispatchloop.cli import app
from dispatchloop.daemon.cycles import CycleStore, engine_of
from dispatchloop.replay import open_store
from dispatchloop.replay.base import TimeWindow
from dispatchloop.replay.migrate import head_revision

pytestmark = pytest.mark.integration


@pytest.fixture
def cycles(store_url: str) -> Iterator[CycleStore]:
    store = open_store(store_url)
    try:
        yield CycleStore(engine_of(store))
    finally:
        store.close()


def test_head_is_the_loop_migration():
    assert head_revision() == "0004"


def test_a_cycle_goes_from_running_to_its_outcome(cycles: CycleStore):
    epoch = cycles.new_epoch("a")
    cycle_id = cycles.start("interval", "a", epoch, events_seen=1234)
    window = TimeWindow(None, None)
    cycles.advance(cycle_id, "train", {"fit": 1.5}, window=window)
    cycles.advance(cycle_id, "register", {"fit": 1.5, "train": 20.0}, version="v1")
    assert cycles.finish(cycle_id, "rejected", ["paired_sim: CI includes 0"])
    assert not cycles.finish(cycle_id, "promoted"), "a finished cycle cannot finish again"
    cycle = cycles.get(cycle_id)
    assert cycle is not None
    assert (cycle.outcome, cycle.stage, cycle.version) == ("rejected", "register", "v1")
    assert cycle.reasons == ("paired_sim: CI includes 0",)
    assert cycle.timings == {"fit": 1.5, "train": 20.0}
    assert cycle.events_seen == 1234 and cycle.leader_epoch == epoch
    assert cycle.finished_at is not None and cycle.finished_at >= cycle.started_at


def test_a_new_leader_aborts_the_dead_leaders_running_cycle(cycles: CycleStore):
    old = cycles.new_epoch("a")
    orphan = cycles.start("drift", "a", old)
    cycles.advance(orphan, "train", {"fit": 1.0})
    new = cycles.new_epoch("b")
    assert new > old and cycles.current_epoch() == new
    mine = cycles.start("interval", "b", new)
    assert cycles.abort_orphans(new) == [orphan]
    aborted = cycles.get(orphan)
    assert aborted is not None and aborted.outcome == "aborted"
    assert "during stage train" in aborted.reasons[0]
    still = cycles.get(mine)
    assert still is not None and still.outcome == "running"
    assert not cycles.finish(orphan, "promoted"), "the dead leader cannot finish it later"
    assert cycles.abort_orphans(new) == [], "the current term's cycle is left alone"
    assert cycles.abort_orphans(new, own=True) == [mine]


def test_list_is_newest_first_and_requests_are_consumed_once(cycles: CycleStore):
    epoch = cycles.new_epoch("a")
    ids = [cycles.start("interval", "a", epoch) for _ in range(3)]
    assert [c.id for c in cycles.recent(2)] == ids[:0:-1]
    first = cycles.request_retrain("new fleet", "ops@host")
    second = cycles.request_retrain("again", "ops@host")
    assert [r.id for r in cycles.pending_requests()] == [first, second]
    cycles.consume_requests([first, second], ids[-1])
    assert cycles.pending_requests() == []


def _cli(store_url: str, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(app, list(args), env={"DISPATCHLOOP_STORE_URL": store_url})
    return result.exit_code, result.stdout, result.stderr


def test_cli_retrain_then_cycles_list_and_show(store_url: str, cycles: CycleStore):
    code, out, _ = _cli(store_url, "retrain", "--reason", "new depot", "--json")
    assert code == 0 and json.loads(out)["reason"] == "new depot"
    assert [r.reason for r in cycles.pending_requests()] == ["new depot"]
    epoch = cycles.new_epoch("a")
    older = cycles.start("request", "a", epoch)
    cycles.finish(older, "skipped", ["the window holds 10 stored events, fewer than 3000"])
    newer = cycles.start("interval", "a", epoch)
    code, out, _ = _cli(store_url, "cycles", "list", "--json")
    assert code == 0
    listed = json.loads(out)["cycles"]
    assert [c["id"] for c in listed] == [newer, older]
    assert {k: listed[1][k] for k in ("trigger", "stage", "outcome", "version")} == {
        "trigger": "request",
        "stage": "fit",
        "outcome": "skipped",
        "version": None,
    }
    assert listed[1]["reasons"] == ["the window holds 10 stored events, fewer than 3000"]
    code, out, _ = _cli(store_url, "cycles", "show", str(older))
    assert code == 0 and "skipped" in out and "fewer than 3000" in out
    code, _, err = _cli(store_url, "cycles", "show", "999")
    assert code == 2 and "no cycle 999" in err


@pytest.mark.parametrize("command", [["cycles", "list"], ["retrain"]])
def test_an_unreachable_store_is_exit_2_in_one_sentence(command: list[str], tmp_path: Path):
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    code, out, err = _cli(url, *command)
    assert code == 2, out + err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "secret" not in err and "DISPATCHLOOP_STORE_URL" in err
    code, _, err = _cli(f"sqlite:///{tmp_path / 'missing.db'}", *command)
    assert code == 2 and "no replay store" in err
