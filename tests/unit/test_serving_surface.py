"""Serving's whole surface stays torch-free, its answer reads back exactly, and its settings
come from the environment."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from dispatchloop.serving.dispatcher import Decision, Dispatcher
from dispatchloop.serving.http import create_app, decision_json, read_body
from dispatchloop.serving.metrics import ServingMetrics
from dispatchloop.settings import ConfigError, load_settings


def test_no_serving_module_imports_torch() -> None:
    modules = "loader, follower, http, service, metrics, dispatcher"
    code = (
        f"import sys\nfrom dispatchloop.serving import {modules}\n"
        "import dispatchloop.cli.serve\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serving_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings().serving
    assert (defaults.host, defaults.epsilon, defaults.follow) == ("127.0.0.1", 0.0, True)
    monkeypatch.setenv("DISPATCHLOOP_SERVING__PORT", "9000")
    monkeypatch.setenv("DISPATCHLOOP_SERVING__EPSILON", "0.05")
    monkeypatch.setenv("DISPATCHLOOP_SERVING__FOLLOW", "false")
    serving = load_settings().serving
    assert (serving.port, serving.epsilon, serving.follow) == (9000, 0.05, False)
    monkeypatch.setenv("DISPATCHLOOP_SERVING__EPSILON", "1.0")
    with pytest.raises(ConfigError, match="DISPATCHLOOP_SERVING__EPSILON"):
        load_settings()


def test_the_answer_reads_back_as_exactly_the_decisions_numbers() -> None:
    """Every float a client parses from `POST /v1/decide` is the float `decide` returned."""
    rng = np.random.default_rng(1)
    awkward = [0.0, -0.0, 1e-05, 1e16, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, 1 / 3]
    random = (rng.standard_normal(4_000) * 10.0 ** rng.integers(-12, 12, 4_000)).tolist()
    values = awkward + random
    for start in range(0, len(values), 40):
        scores = tuple(v if k % 7 else None for k, v in enumerate(values[start : start + 40]))
        propensity = float(rng.random())
        decision = Decision("d-1", 0, "dqn", "v3", propensity, scores)
        answer = json.loads(decision_json(decision))
        assert answer == {
            "driver_id": "d-1",
            "policy": "dqn",
            "model_version": "v3",
            "propensity": propensity,
            "scores": list(scores),
        }
        signs = [math.copysign(1, s) for s in answer["scores"] if s is not None]
        assert signs == [math.copysign(1, s) for s in scores if s is not None]
    greedy = json.loads(decision_json(Decision("d-2", 1, "greedy", None, 1.0, (None, -2.5))))
    assert greedy["model_version"] is None


def _receiver(messages: list[dict[str, Any]]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def test_the_decide_body_is_read_whole_in_chunks_and_cut_past_the_limit() -> None:
    def read(messages: list[dict[str, Any]], limit: int = 100) -> bytes | None:
        return asyncio.run(read_body(_receiver(messages), limit))

    chunk = {"type": "http.request", "more_body": True}
    assert read([{"type": "http.request", "body": b"{}"}]) == b"{}"
    assert read([{"type": "http.request"}]) == b""
    assert (
        read(
            [
                {**chunk, "body": b"ab"},
                {**chunk, "body": b"cd"},
                {"type": "http.request", "body": b"e"},
            ]
        )
        == b"abcde"
    )
    # past the limit, reading stops (the caller refuses it): no message is awaited after
    assert (
        read([{**chunk, "body": b"x" * 60}, {**chunk, "body": b"y" * 60}]) == b"x" * 60 + b"y" * 60
    )
    assert read([{**chunk, "body": b"ab"}, {"type": "http.disconnect"}]) is None


def test_decide_gets_the_same_answer_past_the_router_as_through_it() -> None:
    """`create_app` sends `POST /v1/decide` straight to its endpoint; the router holds the
    same endpoint (reached, say, under a root path), and other methods get a 405."""
    body = _decide_body()
    dispatcher = Dispatcher(epsilon=0.0, seed=0)
    app = create_app(dispatcher, ServingMetrics())
    direct = asyncio.run(_call(app, "POST", "/v1/decide", body))
    routed = asyncio.run(_call(app, "POST", "/api/v1/decide", body, root_path="/api"))
    assert direct[0] == routed[0] == 200
    assert json.loads(direct[1]) == json.loads(routed[1])
    assert json.loads(direct[1])["policy"] == "greedy"
    assert int(dict(direct[2])[b"content-length"]) == len(direct[1])
    assert asyncio.run(_call(app, "GET", "/v1/decide", b""))[0] == 405
    refused = asyncio.run(_call(app, "POST", "/v1/decide", b'{"candidates": 3}'))
    assert refused[0] == 422 and json.loads(refused[1])["error"] == "invalid_request"


def _decide_body() -> bytes:
    candidates = [
        {"driver_id": f"d-{k}", "lat": 52.37 + k / 100, "lon": 4.89, "available_in_min": k,
         "queue_len": 0, "eligible": True}
        for k in range(3)
    ]  # fmt: skip
    return json.dumps(
        {
            "decided_at": "2026-12-01T08:00:00Z",
            "booking": {
                "booking_id": "b-1", "priority": 2,
                "pickup": {"lat": 52.37, "lon": 4.89}, "dropoff": {"lat": 52.30, "lon": 4.95},
                "window_start": "2026-12-01T08:10:00Z", "window_end": "2026-12-01T08:40:00Z",
            },
            "candidates": candidates,
        }
    ).encode()  # fmt: skip


async def _call(
    app: Any, method: str, path: str, body: bytes, root_path: str = ""
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": root_path, "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, _receiver([{"type": "http.request", "body": body}]), send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), sent[0]["headers"]
