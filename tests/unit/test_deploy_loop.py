"""The `run` process's metrics against the deploy artefacts: every metric the dashboard and
the alert rules query is one the process exports, the exposition passes promtool, the
dashboard has its three rows, and the systemd unit runs `run` as Type=notify."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dispatchloop.consumers.metrics import IngestMetrics
from dispatchloop.daemon.metrics import LoopMetrics
from dispatchloop.daemon.shadow import ShadowMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(dispatchloop_[a-z_]+)")


def _exposition() -> bytes:
    """The run process registers these on its one CollectorRegistry (shadow: with a registry)."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    LoopMetrics(registry, "host:1")
    ShadowMetrics(registry)
    return generate_latest(registry)


def _exported_names() -> set[str]:
    names = set()
    for family in text_string_to_metric_families(_exposition().decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_and_alerts_query_only_exported_metrics():
    text = (DEPLOY / "prometheus/alerts.yml").read_text()
    text += (DEPLOY / "grafana/dashboards/dispatchloop.json").read_text()
    referenced = set(METRIC.findall(text))
    exported = _exported_names()
    # A labelled family without samples yet (no dead letter, no gate) still has its TYPE line.
    missing = sorted(
        name
        for name in referenced
        if name not in exported and re.sub(r"_(total|bucket|sum|count)$", "", name) not in exported
    )
    assert not missing, f"queried but never exported: {missing}"
    assert {
        "dispatchloop_cycles_total",
        "dispatchloop_leader",
        "dispatchloop_drift_psi",
        "dispatchloop_shadow_agreement",
        "dispatchloop_shadow_snips_reward",
    } <= referenced


def test_the_exposition_passes_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package `prometheus`)"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=_exposition(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_has_ingest_loop_and_model_rows():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/dispatchloop.json").read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Ingest", "Loop", "Models"]


def test_systemd_unit_runs_the_loop_as_a_notify_service_with_a_watchdog():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd/dispatchloop.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("dispatchloop run")
    assert int(service["WatchdogSec"]) >= 30
    # TimeoutStopSec must exceed the child's grace (10 s) + run's stop margin (10 s).
    assert int(service["TimeoutStopSec"]) > 20
    assert service["NotifyAccess"] == "main"


def test_systemd_unit_exposure_is_at_most_2_5():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (Debian package `systemd`)"
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(DEPLOY / "systemd/dispatchloop.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    assert float(match.group(1)) <= 2.5


def test_container_runs_the_loop_non_root_with_a_readiness_healthcheck():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER dispatchloop$", dockerfile, re.M)
    assert re.search(r"^CMD \[\"run\"\]$", dockerfile, re.M)
    healthcheck = dockerfile[dockerfile.index("HEALTHCHECK") :]
    assert "/readyz" in healthcheck.split("\n\n")[0]
    compose = (DEPLOY / "docker-compose.yml").read_text()
    assert 'command: ["run"]' in compose and "stop_grace_period: 60s" in compose
