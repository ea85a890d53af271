"""JSON log lines and the metrics/health HTTP endpoint (a real server on a free port)."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from dispatchloop.daemon.http import MetricsServer
from dispatchloop.logs import JsonFormatter, configure_logging
from dispatchloop.settings import Settings


def test_json_formatter_emits_one_object_with_extra_fields() -> None:
    record = logging.LogRecord("dispatchloop.x", logging.WARNING, "f.py", 1, "lag %d", (5,), None)
    record.partitions = [0, 2]
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "WARNING" and entry["logger"] == "dispatchloop.x"
    assert entry["msg"] == "lag 5" and entry["partitions"] == [0, 2]
    assert entry["ts"].endswith("+00:00")


def test_configure_logging_auto_uses_json_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream)
    logging.getLogger("dispatchloop.test").info("hello", extra={"n": 3})
    assert json.loads(stream.getvalue().strip()) | {"ts": None} == {
        "ts": None,
        "level": "INFO",
        "logger": "dispatchloop.test",
        "msg": "hello",
        "n": 3,
    }


def test_configure_logging_text_is_readable() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="text"), stream)
    logging.getLogger("dispatchloop.test").warning("careful")
    assert "WARNING" in stream.getvalue() and "careful" in stream.getvalue()
    assert not stream.getvalue().startswith("{")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


@pytest.fixture
def server() -> Any:
    registry = CollectorRegistry()
    Counter("dispatchloop_things", "Things.", registry=registry).inc(3)
    state = {"ready": False}

    def readiness() -> tuple[bool, dict[str, Any]]:
        return state["ready"], {"ready": state["ready"], "why": "consumer not joined"}

    srv = MetricsServer(registry, readiness, "127.0.0.1", 0).start()
    yield srv, state
    srv.stop()


def test_endpoints(server: Any) -> None:
    srv, state = server
    base = f"http://127.0.0.1:{srv.address[1]}"
    status, body = _get(f"{base}/metrics")
    assert status == 200 and b"dispatchloop_things_total 3.0" in body
    assert _get(f"{base}/healthz")[0] == 200
    status, body = _get(f"{base}/readyz")
    assert status == 503 and json.loads(body)["why"] == "consumer not joined"
    state["ready"] = True
    assert _get(f"{base}/readyz")[0] == 200
    assert _get(f"{base}/nope")[0] == 404
