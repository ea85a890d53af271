"""Deployment artefacts are valid: Prometheus config and alert rules pass promtool,
the dashboard is well-formed, and both only reference dispatchloop's own metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(dispatchloop_[a-z_]+)")


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is required (Debian package `prometheus`; .ci/run installs it)"
    return path


@pytest.mark.parametrize(
    ("verb", "file"), [("config", "prometheus/prometheus.yml"), ("rules", "prometheus/alerts.yml")]
)
def test_promtool_accepts(verb: str, file: str):
    result = subprocess.run(
        [_promtool(), "check", verb, str(DEPLOY / file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_valid_and_queries_dispatchloop_metrics():
    dashboard = json.loads((DEPLOY / "grafana/dashboards/dispatchloop.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        exprs = [target["expr"] for target in panel["targets"]]
        assert exprs and all(METRIC.search(expr) for expr in exprs), panel["title"]


def referenced_metrics() -> set[str]:
    """Metric families the dashboard and alerts query (suffixes of histograms stripped)."""
    text = (DEPLOY / "prometheus/alerts.yml").read_text()
    text += (DEPLOY / "grafana/dashboards/dispatchloop.json").read_text()
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in METRIC.findall(text)}
