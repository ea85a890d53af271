"""`dispatchloop serve`: the dispatcher as an HTTP sidecar (Starlette on uvicorn).

Endpoints (DESIGN.md, "Serving contract"):
- `POST /v1/decide`: a `DecideRequest` → `{"driver_id", "policy", "model_version",
  "propensity", "scores"}`. The body is screened by msgspec mirrors of the event
  models (`screening.screen_decide_request`: stricter, the same values); whatever
  they do not accept is validated by the models straight from bytes, so a bad
  request gets the models' 422 naming the field (`candidates.3.lat`), never a 500.
  The decision runs on the event loop: it is a few hundred microseconds of NumPy,
  cheaper than a hop to a worker thread.
- `GET /v1/models`: which versions serve each scope, the canary share, epsilon.
- `/healthz` (alive), `/readyz` (503 until the follower has read `dispatch.models`
  to the end offsets seen at start), `/metrics` (Prometheus, `ServingMetrics`).

Why Starlette and uvicorn (uvloop + httptools): a maintained ASGI stack whose
per-request overhead is small next to the decision; FastAPI's dependency and
serialisation layers cost more than the decision itself (benchmarks/serving.py).
`POST /v1/decide` itself skips even Starlette's router (`create_app`), and uvicorn
trusts no proxy header (nothing stands between the sidecar and the dispatch system)
and does not name itself in a Server header.
Bound to loopback by default: the sidecar serves the dispatch system beside it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import msgspec
import uvicorn
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatchloop.events import DecideRequest
from dispatchloop.screening import screen_decide_request
from dispatchloop.serving.dispatcher import (
    Decision,
    Dispatcher,
    Routing,
    ServedModel,
    ServingRequest,
)
from dispatchloop.serving.follower import ModelFollower
from dispatchloop.serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
"""A 64-candidate request is ~10 KB; anything far larger is refused before parsing."""
MAX_REPORTED_ERRORS = 10
KEEP_ALIVE_S = 75
"""Idle keep-alive connections are kept this long (uvicorn's 5 s default would make a
quiet dispatch system reconnect, or hit a connection closed under it)."""


DECIDE_PATH = "/v1/decide"


def create_app(
    dispatcher: Dispatcher, metrics: ServingMetrics, follower: ModelFollower | None = None
) -> ASGIApp:
    """The ASGI application; `follower` None means models are swapped by the embedder.

    `POST /v1/decide` goes straight to its endpoint, in front of Starlette's router:
    it is the service's hot path, and the router, its two middleware layers and
    Starlette's request and response objects cost ~20 µs a decision, as much as the
    sampling and the answer's encoding together (benchmarks/serving_inprocess.py).
    Every other request goes through Starlette, whose table holds the same endpoint
    (a 405 for another method on the path, 404 elsewhere, as before)."""
    decide = _DecideEndpoint(dispatcher, metrics)
    router = _router(decide, dispatcher, metrics, follower)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == DECIDE_PATH and scope["method"] == "POST":
            await decide(scope, receive, send)
        else:
            await router(scope, receive, send)

    return app


class _DecideEndpoint:
    """`POST /v1/decide` as a plain ASGI application: read the body, decide, answer."""

    def __init__(self, dispatcher: Dispatcher, metrics: ServingMetrics) -> None:
        self._dispatcher = dispatcher
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await read_body(receive, MAX_BODY_BYTES)
        if body is None:
            return  # the client went away: nobody to answer
        if len(body) > MAX_BODY_BYTES:
            self._metrics.invalid_requests.inc()
            refusal = _invalid("body", f"the body exceeds {MAX_BODY_BYTES} bytes", [])
            await refusal(scope, receive, send)
            return
        decide_request = validated(body)
        if isinstance(decide_request, ValidationError):
            self._metrics.invalid_requests.inc()
            await _validation_failure(decide_request)(scope, receive, send)
            return
        decision = self._dispatcher.decide(decide_request)
        self._metrics.decided(
            decision.model_version, decision.policy, time.perf_counter() - started
        )
        answer = decision_json(decision)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if the client disconnected first.

    Reading stops once more than `limit` bytes have come (the caller refuses the
    request whatever the rest holds; the server discards it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False) or size > limit:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _router(
    decide: _DecideEndpoint,
    dispatcher: Dispatcher,
    metrics: ServingMetrics,
    follower: ModelFollower | None,
) -> Starlette:
    """Starlette's routing of every path: models, health, readiness, metrics."""

    async def models(request: Request) -> Response:
        return JSONResponse(models_report(dispatcher, follower))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"alive": True})

    async def readyz(request: Request) -> Response:
        if follower is None:
            return JSONResponse({"ready": True})
        if not follower.alive:
            reason = "not following dispatch.models (the follower thread is not running)"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        if not follower.caught_up.is_set():
            reason = "still reading dispatch.models to its end"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return JSONResponse({"ready": True})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.collector_registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route(DECIDE_PATH, decide, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )


def validated(body: bytes) -> ServingRequest | ValidationError:
    """The request, screened fast or else validated by the models (their error if invalid).

    `screen_decide_request` accepts only what the models accept, as the same values
    (tests/unit/test_serving_screening.py); the rest, valid or not, is the models' call."""
    screened = screen_decide_request(body)
    if screened is not None:
        return screened
    try:
        return DecideRequest.model_validate_json(body)
    except ValidationError as exc:
        return exc


_ANSWER_ENCODER = msgspec.json.Encoder()


def decision_json(decision: Decision) -> bytes:
    """The serving contract's answer; the caller copies policy, version, propensity.

    msgspec writes each float as its shortest round-trip form, so a client reads back
    exactly the numbers `decide` returned (tests/unit/test_serving_http.py); it costs a
    tenth of `json.dumps` on 40 scores."""
    return _ANSWER_ENCODER.encode(
        {
            "driver_id": decision.driver_id,
            "policy": decision.policy,
            "model_version": decision.model_version,
            "propensity": decision.propensity,
            "scores": decision.scores,
        }
    )


def _validation_failure(exc: ValidationError) -> Response:
    errors = [
        {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False)[:MAX_REPORTED_ERRORS]
    ]
    return _invalid(errors[0]["field"], errors[0]["message"], errors)


def _invalid(field: str, message: str, errors: list[dict[str, str]]) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "field": field, "message": message, "errors": errors},
        status_code=422,
    )


def models_report(dispatcher: Dispatcher, follower: ModelFollower | None) -> dict[str, Any]:
    """`GET /v1/models`: each scope's champion, challenger and canary share."""
    return {
        "epsilon": dispatcher.epsilon,
        "following": follower is not None,
        "caught_up": follower is None or follower.caught_up.is_set(),
        "scopes": {
            scope: _routing_report(routing) for scope, routing in dispatcher.routings().items()
        },
    }


def _routing_report(routing: Routing) -> dict[str, Any]:
    def model(served: ServedModel | None) -> dict[str, str] | None:
        return None if served is None else {"version": served.version, "policy": served.policy}

    return {
        "champion": model(routing.champion),
        "challenger": model(routing.challenger),
        "challenger_share": routing.challenger_share if routing.challenger is not None else 0.0,
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so callers know the address before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class SidecarServer:
    """uvicorn serving the app on a bound socket: `run()` in the main thread (signals
    stop it gracefully), or `start()`/`stop()` on a background thread (tests, embedding)."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        self.socket = sock
        config = uvicorn.Config(
            app,
            lifespan="off",
            proxy_headers=False,  # bound to loopback: no proxy in front to trust
            server_header=False,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return str(host), int(port)

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (uvicorn finishes in-flight requests first)."""
        host, port = self.address
        logger.info("serving decisions on http://%s:%d/v1/decide", host, port)
        self._server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 10.0) -> SidecarServer:
        """Serve on a daemon thread; returns once it accepts requests."""
        self._thread = threading.Thread(target=self.run, name="serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the serving HTTP server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests, join the thread (bounded)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        self.socket.close()
