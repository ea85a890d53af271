"""Per-request cost of `serve`'s ASGI app without HTTP: `POST /v1/decide` in process.

The app (`serving.http.create_app`) is called directly with ASGI messages on one
event loop, on the same model and 40-candidate bodies as benchmarks/serving.py,
so the figure is the server's own work per decision (body validation, featurizer,
scorer, answer) without the socket, HTTP parser and wrk. A few seconds.

    PYTHONPATH=src .venv/bin/python benchmarks/serving_inprocess.py [--requests 3000]

Prints the mean and p50/p99 per request (wall, one core) and the CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dispatchloop.rl.card import read_card
from dispatchloop.serving.dispatcher import Dispatcher, Routing
from dispatchloop.serving.http import create_app
from dispatchloop.serving.loader import build_served_model
from dispatchloop.serving.metrics import ServingMetrics
from serving import make_model, make_requests


async def _call(app: Any, body: bytes) -> tuple[int, bytes]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/decide", "raw_path": b"/v1/decide", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent[1:])


async def _measure(app: Any, bodies: list[bytes], n: int) -> tuple[np.ndarray, float]:
    for body in bodies[:200]:  # warm-up
        status, _ = await _call(app, body)
        assert status == 200, status
    times = np.empty(n)
    cpu = time.process_time()
    for k in range(n):
        began = time.perf_counter()
        await _call(app, bodies[k % len(bodies)])
        times[k] = time.perf_counter() - began
    return times * 1e6, 1e6 * (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_model(Path(tmp))
        model = build_served_model(directory, read_card(directory), "v1")
    dispatcher = Dispatcher(epsilon=0.05, seed=0)
    dispatcher.swap("*", Routing(champion=model))
    app = create_app(dispatcher, ServingMetrics())
    bodies = [r.model_dump_json().encode() for r in make_requests(400)]
    micros, cpu_us = asyncio.run(_measure(app, bodies, args.requests))
    print("| requests | mean µs | p50 µs | p99 µs | CPU µs/request |")
    print("|---:|---:|---:|---:|---:|")
    p50, p99 = np.percentile(micros, [50, 99])
    print(f"| {args.requests} | {micros.mean():.0f} | {p50:.0f} | {p99:.0f} | {cpu_us:.0f} |")


if __name__ == "__main__":
    main()
