"""The HTTP service: FastAPI over a model runner, with validation at the edge, auth, metrics and a bounded queue.

Requests (JSON, or multipart files for image models: see request_body.py) are validated before they reach the
model (422, 415), join the micro-batcher's bounded queue (503 with
Retry-After when it is full) and get their predictions from a shared forward pass, run in a thread or in
worker processes (see workers.py); a request not answered within the timeout gets a 504. Shutdown
(SIGINT/SIGTERM) stops accepting, lets uvicorn finish the requests in flight, then drains the queue.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations as objects
import asyncio
import hmac
import json
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import transferlab
from transferlab.deploy.batching import MicroBatcher, QueueFull, ShuttingDown
from transferlab.deploy.request_body import Limits, UnsupportedMedia, openapi_body, read_rows, request_model
from transferlab.deploy.service_metrics import MetricsMiddleware, ServiceMetrics
from transferlab.deploy.workers import ModelRunner

BEARER = HTTPBearer(auto_error=False)
DEFAULT_LIMITS = Limits()


class PredictionsResponse(JSONResponse):
    """JSON predictions; a numpy scalar a task's decoder left in them (a QA score, an offset) becomes a number
    instead of failing the response."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                          default=numpy_scalar).encode("utf-8")


def numpy_scalar(value):
    """The Python number of a numpy scalar (json.dumps' fallback); TypeError for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def token_guard(token: str):
    """A FastAPI dependency answering 401 unless the request carries `Authorization: Bearer <token>`."""
    expected = token.encode()

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        # compare_digest: the time taken does not tell an attacker how much of a guess was right
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


def create_app(runner: ModelRunner, limits: Limits = DEFAULT_LIMITS, token: str | None = None) -> FastAPI:
    """The FastAPI application serving `runner`'s model; with `token`, every endpoint but /health needs it.
    The app closes the runner when it shuts down."""
    info = runner.info
    metrics = ServiceMetrics()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher = MicroBatcher(runner, metrics, limits.max_batch, limits.max_wait_ms, limits.max_queue)
        metrics.watch_queue(lambda: batcher.queued)
        batcher.start()
        state.update(batcher=batcher, started=time.time())
        try:
            yield
        finally:
            await batcher.close()
            runner.close()

    # max_body_size: 413 by Content-Length, or while a body without one streams in
    app = FastAPI(title="transferlab model service", version=transferlab.__version__, lifespan=lifespan,
                  max_body_size=limits.max_body_bytes,
                  description=f"A {info.task} model; each input has the fields {', '.join(info.inputs)}. "
                              "Labels, backbone and limits at /metadata.")
    guarded = [Depends(token_guard(token))] if token else []
    request_body = request_model(info.inputs, info.models)

    @app.post("/predict", summary="Predictions for one input or a list of inputs", dependencies=guarded,
              openapi_extra=openapi_body(request_body, info.inputs),
              responses={401: {"description": "missing or wrong bearer token"},
                         413: {"description": "the body is larger than the limit"},
                         415: {"description": "a body (or a file part) of a content type the model does not read"},
                         422: {"description": "invalid request (the message names the item)"},
                         500: {"description": "the model failed on this request"},
                         503: {"description": "queue full or shutting down: retry after Retry-After seconds"},
                         504: {"description": "not answered within the timeout"}})
    async def predict(request: Request) -> Response:
        try:
            rows = await read_rows(request, request_body, info.inputs, info.models, limits)
        except UnsupportedMedia as err:
            raise HTTPException(415, str(err)) from err
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        batcher: MicroBatcher = state["batcher"]
        try:
            future = batcher.submit(rows)
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after_s)}) from err
        except ShuttingDown as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        try:
            predictions = await asyncio.wait_for(future, limits.timeout_s)
        except TimeoutError as err:
            raise HTTPException(504, f"not answered within {limits.timeout_s:g} s: the service is overloaded; "
                                     "retry later or send fewer inputs") from err
        except Exception as err:  # noqa: BLE001 - the model raised on this request only (see batching.py)
            raise HTTPException(500, f"the model failed on this request ({type(err).__name__})") from err
        return PredictionsResponse({"predictions": predictions})

    @app.get("/health", summary="Liveness: the model is loaded and the batcher runs")
    async def health() -> dict:
        batcher: MicroBatcher = state["batcher"]
        return {"status": "ok", "uptime_s": round(time.time() - state["started"], 1),
                "queued": batcher.queued, "batches": batcher.batches, "inputs": batcher.rows_done}

    @app.get("/metadata", summary="The model: task, labels, backbone, backend, limits, version",
             dependencies=guarded)
    async def metadata() -> dict:
        return {**info.metadata, "version": transferlab.__version__, "workers": runner.workers,
                "limits": asdict(limits)}

    @app.get("/metrics", summary="Prometheus metrics (text format)", dependencies=guarded,
             response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints={"/predict", "/health", "/metadata",
                                                                      "/metrics"})
    return app


def serve(runner: ModelRunner, host: str = "127.0.0.1", port: int = 8000, limits: Limits = DEFAULT_LIMITS,
          token: str | None = None, log_level: str = "info") -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM; in-flight requests finish before exit."""
    import uvicorn

    if runner.workers == 0:
        # the inference thread holds the GIL between torch ops; a shorter switch interval lets the event loop
        # accept and parse requests while a batch runs
        sys.setswitchinterval(0.0005)
    uvicorn.run(create_app(runner, limits, token), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=30)
