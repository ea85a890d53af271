"""Hot swap under load: a real `serve` process answers ~1,000 decisions/s (wrk) while
champion and challenger move every second through the registry, its outbox and
dispatch.models.
No request fails, and every decision names a version whose own choice it is."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from serving_support import Client, PublishingRegistry, decide_requests, make_served_model, wait_for

from dispatchloop.serving.dispatcher import Routing, decide
from dispatchloop.serving.loader import load_from_registry
from dispatchloop.testing.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 1_000.0
SECONDS = 6.0
THREADS = 30  # connections, one per wrk thread; each pauses ~28 ms after an answer


class Answer(NamedTuple):
    status: int
    driver_id: str | None
    model_version: str | None
    propensity: float
    scores: tuple[float | None, ...]
    """The deciding arm's scores: they identify the request and the model that scored it."""


def test_promotions_every_second_under_1000_decisions_per_second(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = f"dispatch.models.t{uuid.uuid4().hex[:12]}"
    published = PublishingRegistry(tmp_path, kafka_bootstrap, topic)
    versions = [published.register(make_served_model(tmp_path / f"m{s}", s)) for s in (1, 2, 3)]
    published.promote(versions[0])
    requests = decide_requests(200, n_drivers=40)
    bodies = [r.model_dump_json().encode() for r in requests]
    models = {v: load_from_registry(published.registry, v) for v in versions}
    rng = np.random.default_rng(0)
    expected: dict[tuple[str, tuple[float | None, ...]], str] = {}
    for version, model in models.items():
        for request in requests:
            decision = decide(request, Routing(model), 0.0, rng)
            expected[(version, decision.scores)] = decision.driver_id
    assert len(expected) == 3 * len(requests)  # no two (version, request) score alike
    process, port = _serve(tmp_path, kafka_bootstrap, topic)
    try:
        probe = wait_for(lambda: _connect(port), what="serve to listen")
        wait_for(lambda: probe.request("GET", "/readyz")[0] == 200, what="serve ready")
        probe.close()
        answers, moves, rate = _load_while_promoting(port, bodies, published, versions, tmp_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
            published.close()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert moves == 2 * (int(SECONDS) - 1)
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:3]
    served = {a.model_version for a in answers}
    assert served <= set(versions)
    assert served == set(versions), served  # every version served some of the load
    for answer in answers:  # scores that version gives some request, and that version's choice
        assert (str(answer.model_version), answer.scores) in expected, answer
        assert answer.driver_id == expected[(str(answer.model_version), answer.scores)]
        assert 0.0 < answer.propensity <= 1.0
    print(f"{len(answers)} decisions at {rate:.0f}/s, {moves} alias moves, none failed")
    # The load is offered at RATE; what a shared 2-core CI host serves varies (826-857/s at
    # load 4-6, 527/s once in a loaded CI run). The floor only proves the swaps happened
    # under real load; speed itself is measured in benchmarks/serving.py, not asserted here.
    assert rate >= 0.4 * RATE, f"only {rate:.0f} decisions/s were served: too little load"


WRK_SCRIPT = r"""
local counter = 0
setup = function(thread)
  thread:set("id", counter)
  counter = counter + 1
end
init = function(args)
  bodies, out = {}, io.open(os.getenv("OUT") .. "." .. id, "w")
  for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
  n = id
end
request = function()
  local k = n % #bodies
  n = n + tonumber(os.getenv("THREADS"))
  return wrk.format("POST", "/v1/decide", {["Content-Type"] = "application/json"}, bodies[k + 1])
end
delay = function() return tonumber(os.getenv("PAUSE_MS")) end
response = function(status, headers, body)
  out:write(status, "\t", body, "\n")
  out:flush()
end
"""


def _load_while_promoting(
    port: int, bodies: list[bytes], published: PublishingRegistry, versions: list[str], tmp: Path
) -> tuple[list[Answer], int, float]:
    """wrk (one connection per thread, each pausing its share of the interval after an
    answer) near RATE, while champion and challenger move every second."""
    (tmp / "bodies.jsonl").write_bytes(b"".join(body + b"\n" for body in bodies))
    (tmp / "hot_swap.lua").write_text(WRK_SCRIPT)
    env = {
        **os.environ,
        "BODIES": str(tmp / "bodies.jsonl"),
        "OUT": str(tmp / "answers"),
        "THREADS": str(THREADS),
        "PAUSE_MS": str(max(1, round(1000 * THREADS / RATE - 1.5))),  # minus ~the latency
    }
    command = ["wrk", f"-t{THREADS}", f"-c{THREADS}", f"-d{SECONDS:g}s", "--timeout", "5s",
               "-s", str(tmp / "hot_swap.lua"), f"http://127.0.0.1:{port}"]  # fmt: skip
    started = time.monotonic()
    load = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    moves = 0
    try:
        for tick in range(1, int(SECONDS)):
            time.sleep(max(0.0, started + tick - 0.5 - time.monotonic()))
            published.promote(versions[tick % 3])
            published.promote(versions[(tick + 1) % 3], alias="challenger", share=0.1 * tick)
            moves += 2
        stdout, stderr = load.communicate(timeout=SECONDS + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.communicate(timeout=10)
    assert load.returncode == 0, stderr.decode()
    assert not stderr, stderr.decode()  # a Lua error
    for problem in ("Socket errors", "Non-2xx"):
        assert problem not in stdout.decode(), stdout.decode()
    answers = []
    for path in sorted(tmp.glob("answers.*")):
        for line in path.read_text().splitlines():
            status, body = line.split("\t", 1)
            answer = json.loads(body)
            answers.append(
                Answer(
                    int(status),
                    answer.get("driver_id"),
                    answer.get("model_version"),
                    float(answer.get("propensity", 0.0)),
                    tuple(answer.get("scores", ())),
                )
            )
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", stdout.decode()).group(1))  # type: ignore[union-attr]
    return answers, moves, rate


def _serve(tmp_path: Path, bootstrap: str, topic: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "DISPATCHLOOP_DATA_DIR": str(tmp_path),
        "DISPATCHLOOP_STORE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "DISPATCHLOOP_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "DISPATCHLOOP_KAFKA__MODELS_TOPIC": topic,
        "DISPATCHLOOP_LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "dispatchloop.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return process, port


def _connect(port: int) -> Client | None:
    client = Client("127.0.0.1", port, timeout_s=2.0)
    try:
        client.request("GET", "/healthz")
    except OSError:
        client.close()
        return None
    return client
