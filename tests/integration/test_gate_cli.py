"""`dispatchloop gate` and `evaluate --ope` end to end, as subprocesses, on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dispatchloop.events import DecisionRecord, DispatchOutcomeEvent
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TINY = DQNConfig(hidden_size=16, n_layers=1)


def _model(directory: Path, *, nan: bool) -> Path:
    torch.manual_seed(0)
    network = CandidateQNetwork(16, 1)
    if nan:
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.fill_(float("nan"))
    save_model(
        directory, network, TINY, CardDraft(model_version=directory.name), export_onnx=not nan
    )
    return directory


def _fill_store(url: str, n_events: int, epsilon: float) -> None:
    store = open_store(url)
    try:
        logger = LoggingPolicy(GreedyPolicy(), "greedy")
        events = simulated_events(
            Scenario.default(), RewardSettings(), logger, n_events, seed=3, epsilon=epsilon
        )
        batch = []
        for event in events:
            raw = json.dumps(event).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
    finally:
        store.close()


def _run(
    tmp_path: Path, *args: str, store_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISPATCHLOOP_")},
        "DISPATCHLOOP_DATA_DIR": str(tmp_path / "data"),
        "DISPATCHLOOP_LOG_FORMAT": "json",
        "DISPATCHLOOP_GATE__MAX_EPISODES": "300",
        "DISPATCHLOOP_GATE__OPE_BOOTSTRAP": "300",
    }
    if store_url is not None:
        env["DISPATCHLOOP_STORE_URL"] = store_url
    return subprocess.run(
        [sys.executable, "-m", "dispatchloop.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_gate_on_the_store_writes_a_record_with_every_gate(tmp_path: Path, sqlite_url: str) -> None:
    _fill_store(sqlite_url, 19 * 40, epsilon=0.3)
    model = _model(tmp_path / "v2", nan=False)
    html = tmp_path / "gate.html"
    result = _run(
        tmp_path,
        "gate",
        "--candidate",
        str(model),
        "--champion",
        "greedy",
        "--json",
        "--html",
        str(html),
        store_url=sqlite_url,
    )
    assert result.returncode in (3, 4), result.stderr  # an untrained network does not beat greedy
    record = DecisionRecord.model_validate_json(result.stdout)
    assert record.candidate == "v2" and record.champion == "greedy"
    assert record.verdict == {3: "reject", 4: "insufficient_evidence"}[result.returncode]
    assert record.scenario is not None and record.scenario.window is not None
    names = [gate.name for gate in record.gates]
    assert names[:2] == ["candidate.sane", "paired_sim"] and "ope.snips" in names
    ope = next(gate for gate in record.gates if gate.name == "ope.dr")
    assert ope.value is not None and "0 without propensity excluded" in ope.detail
    assert "image/png;base64" in html.read_text()


def test_a_nan_model_is_rejected_with_exit_3(tmp_path: Path) -> None:
    model = _model(tmp_path / "broken", nan=True)
    result = _run(tmp_path, "gate", "--candidate", str(model), "--scenario", "default")
    assert result.returncode == 3, result.stderr
    assert "candidate.sane failed" in result.stdout and "non-finite" in result.stdout


def test_identical_policies_exit_4_and_bad_input_exits_2(tmp_path: Path) -> None:
    same = _run(tmp_path, "gate", "--candidate", "greedy", "--scenario", "default", "--json")
    assert same.returncode == 4, same.stderr
    assert json.loads(same.stdout)["verdict"] == "insufficient_evidence"
    bad = _run(tmp_path, "gate", "--candidate", "v9", "--scenario", "default")
    assert bad.returncode == 2 and "v9" in bad.stderr and bad.stderr.count("\n") == 1


def test_evaluate_ope_shows_every_estimator_against_the_logs(
    tmp_path: Path, sqlite_url: str
) -> None:
    _fill_store(sqlite_url, 19 * 30, epsilon=0.3)
    result = _run(
        tmp_path, "evaluate", "--ope", "--policies", "greedy,random", "--json", store_url=sqlite_url
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["decisions"] > 0 and document["excluded_without_propensity"] == 0
    rows = {row["policy"]: row for row in document["policies"]}
    # Random is far worse than the greedy the logs mostly follow, by every estimator.
    for key in ("ips", "snips", "dr"):
        assert rows["random"][f"{key}_vs_baseline"]["ci"][1] < 0


def test_gate_on_a_registry_version_stores_its_record_and_promote_honours_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`gate --candidate v1` resolves the version through the registry and keeps the record
    with it; `models promote v1` then accepts or refuses by that record's verdict."""
    _fill_store(sqlite_url, 1_500, epsilon=0.2)
    model = _model(tmp_path / "untrained", nan=False)
    registered = _run(tmp_path, "models", "register", str(model), "--json", store_url=sqlite_url)
    assert registered.returncode == 0, registered.stderr
    version = json.loads(registered.stdout)["version"]

    gate = _run(
        tmp_path,
        "gate",
        "--candidate",
        version,
        "--champion",
        "greedy",
        "--json",
        store_url=sqlite_url,
    )
    assert gate.returncode in (0, 3, 4), gate.stderr
    record = DecisionRecord.model_validate_json(gate.stdout)
    assert record.candidate == version
    assert f"decision record stored with {version}" in gate.stderr

    shown = _run(tmp_path, "models", "show", version, "--json", store_url=sqlite_url)
    assert shown.returncode == 0, shown.stderr
    assert record.record_id in shown.stdout

    promote = _run(tmp_path, "models", "promote", version, "--json", store_url=sqlite_url)
    if record.verdict == "promote":
        assert promote.returncode == 0, promote.stderr
    else:  # an untrained network should not pass; refused in one sentence, exit 2
        assert promote.returncode == 2
        assert "decision record" in promote.stderr.strip().splitlines()[-1]


def test_gate_names_an_unknown_version_in_one_sentence(tmp_path: Path, sqlite_url: str) -> None:
    result = _run(
        tmp_path, "gate", "--candidate", "v99", "--champion", "greedy", store_url=sqlite_url
    )
    assert result.returncode == 2
    assert result.stderr == (
        "dispatchloop: configuration error: there is no version 'v99' in the registry.\n"
    )
