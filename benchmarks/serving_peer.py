"""The serving benchmark's peer: a straightforward FastAPI + ONNX Runtime decision endpoint.

What a team would write first: FastAPI parses the body into the same `DecideRequest`
model, the same featurizer computes the same features, ONNX Runtime runs the
model's `model.onnx`, and the masked argmax is returned in the same JSON shape.
No exploration, no canary, no metrics: a generous peer. `/v1/decide` is an `async def`
(runs on the event loop, as `serve` does); `/v1/decide-threadpool` the same as a
plain `def`, which FastAPI runs in its thread pool (the more common way to write it).

    python benchmarks/serving_peer.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI

from dispatchloop.decisions.featurizer import demand_map, featurize, situation_from_decision
from dispatchloop.events import DecideRequest
from dispatchloop.rl.card import read_card


def make_app(model_dir: Path) -> FastAPI:
    card = read_card(model_dir)
    demand = demand_map(card.scenario["pickup_points"])  # type: ignore[index,arg-type]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_dir / str(card.onnx_file)), options)
    app = FastAPI()

    def decide(request: DecideRequest) -> dict[str, Any]:
        situation = situation_from_decision(request.decided_at, request.booking, request.candidates)
        features = featurize(situation, demand)
        (q,) = session.run(
            ["q_values"],
            {
                "candidates": features.candidates[None],
                "context": features.context[None],
                "mask": features.mask[None],
            },
        )
        scores = np.where(features.mask, q[0], -np.inf)
        index = int(scores.argmax())
        return {
            "driver_id": request.candidates[index].driver_id,
            "policy": "dqn",
            "model_version": card.version,
            "propensity": 1.0,
            "scores": [float(s) if ok else None for s, ok in zip(q[0], features.mask, strict=True)],
        }

    @app.post("/v1/decide")
    async def decide_on_the_loop(request: DecideRequest) -> dict[str, Any]:
        return decide(request)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"alive": True}

    app.post("/v1/decide-threadpool")(decide)  # FastAPI's default for a blocking `def`
    return app


if __name__ == "__main__":
    uvicorn.run(
        make_app(Path(sys.argv[1])),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        access_log=False,
        log_level="warning",
    )
