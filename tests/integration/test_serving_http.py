"""`serve` over real HTTP on loopback: the library's answer, 422 naming the field (never
500), models/health/readiness/metrics, and the CLI process following promotions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_support import (
    Client,
    PublishingRegistry,
    decide_requests,
    make_served_model,
    wait_for,
)
from test_ingest_process import check_with_promtool

from dispatchloop.rl.card import read_card
from dispatchloop.serving.dispatcher import Dispatcher, Routing, ServedModel, decide
from dispatchloop.serving.follower import ModelFollower, make_models_consumer
from dispatchloop.serving.http import SidecarServer, bind, create_app
from dispatchloop.serving.loader import build_served_model
from dispatchloop.serving.metrics import ServingMetrics
from dispatchloop.settings import KafkaSettings
from dispatchloop.testing.broker import free_port

pytestmark = pytest.mark.integration


def _model(tmp_path: Path, seed: int, version: str) -> ServedModel:
    directory = make_served_model(tmp_path / f"m{seed}", seed)
    return build_served_model(directory, read_card(directory), version)


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[Client, ServedModel, ServingMetrics]]:
    model = _model(tmp_path, 1, "v1")
    dispatcher = Dispatcher(epsilon=0.0, seed=0)
    dispatcher.swap("*", Routing(model))
    metrics = ServingMetrics()
    server = SidecarServer(create_app(dispatcher, metrics), bind("127.0.0.1", 0)).start()
    client = Client(*server.address)
    try:
        yield client, model, metrics
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("n_drivers", [9, 40])
def test_http_decisions_are_the_librarys(
    sidecar: tuple[Client, ServedModel, ServingMetrics], n_drivers: int
) -> None:
    client, model, _ = sidecar
    rng = np.random.default_rng(0)
    for request in decide_requests(60, n_drivers=n_drivers):
        status, answer = client.decide(request)
        assert status == 200, answer
        expected = decide(request, Routing(model), 0.0, rng)
        assert answer["driver_id"] == expected.driver_id
        assert (answer["policy"], answer["model_version"], answer["propensity"]) == (
            "dqn",
            "v1",
            1.0,
        )
        assert len(answer["scores"]) == n_drivers
        assert answer["scores"] == list(expected.scores)  # the same floats, not close ones


def _valid_body() -> dict[str, object]:
    return json.loads(decide_requests(2)[-1].model_dump_json())


def _broken(path: tuple[object, ...], value: object) -> dict[str, object]:
    body = _valid_body()
    target: object = body
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    if value is KeyError:
        del target[path[-1]]  # type: ignore[attr-defined]
    else:
        target[path[-1]] = value  # type: ignore[index]
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_broken(("booking",), KeyError), "booking"),
        (_broken(("candidates", 3, "lat"), "north"), "candidates.3.lat"),
        (_broken(("booking", "priority"), 7), "booking.priority"),
        (_broken(("decided_at",), "2026-12-01T08:00:00"), "decided_at"),
        (_broken(("candidates",), []), "candidates"),
    ],
)
def test_a_bad_request_gets_422_naming_the_field(
    sidecar: tuple[Client, ServedModel, ServingMetrics], body: dict[str, object], field: str
) -> None:
    client, _, metrics = sidecar
    status, answer = client.decide(body)
    assert status == 422
    assert answer["field"] == field
    assert answer["message"]
    assert metrics.invalid_requests._value.get() == 1


def test_malformed_bodies_and_methods_never_get_a_500(
    sidecar: tuple[Client, ServedModel, ServingMetrics],
) -> None:
    client, _, metrics = sidecar
    no_eligible = _valid_body()
    for candidate in no_eligible["candidates"]:  # type: ignore[attr-defined]
        candidate["eligible"] = False
    duplicate = _valid_body()
    duplicate["candidates"][1]["driver_id"] = duplicate["candidates"][0]["driver_id"]  # type: ignore[index]
    for body in (
        b"{not json",
        b"",
        b"[]",
        json.dumps(no_eligible).encode(),
        json.dumps(duplicate).encode(),
    ):
        status, raw = client.request("POST", "/v1/decide", body)
        assert status == 422, raw
        assert json.loads(raw)["error"] == "invalid_request"
    assert client.request("POST", "/v1/decide", b" " * (300 * 1024))[0] == 422
    assert client.request("GET", "/v1/decide")[0] == 405
    assert client.request("GET", "/nowhere")[0] == 404
    assert metrics.invalid_requests._value.get() == 6


def test_models_health_and_metrics(sidecar: tuple[Client, ServedModel, ServingMetrics]) -> None:
    client, _, _ = sidecar
    for request in decide_requests(5):
        assert client.decide(request)[0] == 200
    status, models = client.get_json("/v1/models")
    assert status == 200
    assert models["scopes"]["*"]["champion"] == {"version": "v1", "policy": "dqn"}
    assert models["following"] is False
    assert client.get_json("/healthz") == (200, {"alive": True})
    assert client.get_json("/readyz")[0] == 200
    status, exposition = client.request("GET", "/metrics")
    assert status == 200
    check_with_promtool(exposition)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition.decode())
        for s in family.samples
    }
    key = ("dispatchloop_serving_decisions_total", (("model_version", "v1"), ("policy", "dqn")))
    assert samples[key] == 5
    assert samples[("dispatchloop_serving_decision_seconds_count", ())] == 5


def test_not_ready_until_the_follower_has_caught_up(tmp_path: Path) -> None:
    dispatcher = Dispatcher()
    metrics = ServingMetrics()
    unreachable = KafkaSettings(bootstrap_servers=[f"127.0.0.1:{free_port()}"])
    follower = ModelFollower(
        dispatcher,
        topic="t",
        consumer_factory=lambda: make_models_consumer(unreachable),
        metrics=metrics,
        retry_s=0.2,
    )
    server = SidecarServer(create_app(dispatcher, metrics, follower), bind("127.0.0.1", 0)).start()
    client = Client(*server.address)
    try:
        status, body = client.get_json("/readyz")
        assert status == 503
        assert "not following" in body["reason"]
        follower.start()  # no broker there: retries, counted, never ready
        wait_for(lambda: metrics.follower_errors.labels("broker")._value.get() >= 1, 30)
        status, body = client.get_json("/readyz")
        assert (status, body["reason"]) == (503, "still reading dispatch.models to its end")
        status, answer = client.decide(decide_requests(2)[-1])  # the greedy fallback answers
        assert (status, answer["policy"], answer["model_version"]) == (200, "greedy", None)
        follower.caught_up.set()
        assert client.get_json("/readyz")[0] == 200
    finally:
        follower.stop()
        client.close()
        server.stop()


def test_the_serve_process_seeds_from_the_registry_and_follows_promotions(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = f"dispatch.models.t{uuid.uuid4().hex[:12]}"
    published = PublishingRegistry(tmp_path, kafka_bootstrap, topic)
    v1, v2 = (published.register(make_served_model(tmp_path / f"m{s}", s)) for s in (1, 2))
    published.promote(v1)
    port = free_port()
    env = {
        **os.environ,
        "DISPATCHLOOP_DATA_DIR": str(tmp_path),
        "DISPATCHLOOP_STORE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DISPATCHLOOP_KAFKA__MODELS_TOPIC": topic,
        "DISPATCHLOOP_LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "dispatchloop.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = wait_for(lambda: _connect(port), what="serve to listen")
        wait_for(lambda: client.get_json("/readyz")[0] == 200, what="serve ready")
        assert _champion(client) == v1
        published.promote(v2)
        wait_for(lambda: _champion(client) == v2, what="serve to follow v2")
        status, answer = client.decide(decide_requests(2)[-1])
        assert (status, answer["model_version"]) == (200, v2)
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)
            raise
        published.close()
    assert process.returncode == 0, stderr.decode()[-2000:]


def _connect(port: int) -> Client | None:
    client = Client("127.0.0.1", port, timeout_s=2.0)
    try:
        client.request("GET", "/healthz")
    except OSError:
        client.close()
        return None
    return client


def _champion(client: Client) -> str | None:
    scope = client.get_json("/v1/models")[1]["scopes"].get("*")
    return None if scope is None or scope["champion"] is None else scope["champion"]["version"]
