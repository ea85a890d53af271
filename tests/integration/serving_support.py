"""Helpers of the serving tests: servable model directories, a registry that publishes
to a fresh `dispatch.models` topic, decision requests, and a bounded wait."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dispatchloop.events import DecideRequest, DispatchOutcomeEvent, parse_outcome
from dispatchloop.registry import OutboxPublisher, SqlRegistry, make_producer, open_registry
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.settings import KafkaSettings, RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, LoggingPolicy
from dispatchloop.sim.producer import simulated_events
from dispatchloop.sim.scenario import Scenario

SMALL = DQNConfig(hidden_size=32, n_layers=2)


def make_served_model(directory: Path, seed: int, *, scenario: Scenario | None = None) -> Path:
    """A real (untrained) candidate scorer with its scenario and ONNX export; seed = weights."""
    torch.manual_seed(seed)
    network = CandidateQNetwork(SMALL.hidden_size, SMALL.n_layers)
    world = scenario or Scenario.default()
    draft = CardDraft(
        trainer="dqn", training={"mode": "sim", "seed": seed}, scenario=world.to_dict()
    )
    save_model(directory, network, SMALL, draft, export_onnx=True)
    return directory


class PublishingRegistry:
    """A SQLite registry whose alias moves are published to `topic` through its outbox."""

    def __init__(self, tmp_path: Path, bootstrap: str, topic: str) -> None:
        self.registry: SqlRegistry = open_registry(
            f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "registry"
        )
        self.kafka = KafkaSettings(bootstrap_servers=[bootstrap], models_topic=topic)
        self.publisher = OutboxPublisher(
            self.registry,
            lambda: make_producer(self.kafka.client_options(), 10.0),
            topic,
            clock=lambda: datetime.now(UTC),
        )

    def register(self, directory: Path) -> str:
        return self.registry.register(directory, actor="test").version

    def promote(self, version: str, alias: str = "champion", share: float | None = None) -> None:
        self.registry.promote(
            version, actor="test", reason="test", alias=alias,  # type: ignore[arg-type]
            traffic_share=share, force=True,
        )  # fmt: skip
        result = self.publisher.drain(timeout_s=20.0)
        assert result.backlog == 0, result

    def close(self) -> None:
        self.publisher.close()
        self.registry.close()


def decide_requests(n: int, n_drivers: int = 9, seed: int = 4) -> list[DecideRequest]:
    """Requests built from simulated events: the situations a dispatch system would send."""
    scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
    requests = []
    policy = LoggingPolicy(GreedyPolicy(), "greedy")
    for raw in simulated_events(scenario, RewardSettings(), policy, n, seed=seed):
        event = parse_outcome(json.dumps(raw).encode(), 1 << 20)
        assert isinstance(event, DispatchOutcomeEvent)
        requests.append(
            DecideRequest(
                decided_at=event.decided_at,
                booking=event.booking,
                candidates=event.candidates,
                company_id=event.company_id,
            )
        )
    return requests


def wait_for(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    """Poll `condition` until truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")


class Client:
    """A keep-alive HTTP client of one sidecar (one per thread: http.client is not shared)."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self._connection = http.client.HTTPConnection(host, port, timeout=timeout_s)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self._connection.request(method, path, body=body, headers=headers)
        response = self._connection.getresponse()
        return response.status, response.read()

    def decide(self, request: DecideRequest | dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = (
            request.model_dump_json().encode()
            if isinstance(request, DecideRequest)
            else json.dumps(request).encode()
        )
        status, raw = self.request("POST", "/v1/decide", body)
        return status, json.loads(raw)

    def get_json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, raw = self.request("GET", path)
        return status, json.loads(raw)

    def close(self) -> None:
        self._connection.close()
