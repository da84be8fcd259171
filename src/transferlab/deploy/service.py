"""The HTTP service: FastAPI over a model runner, with validation at the edge, auth, metrics and a bounded queue.

Requests are validated before they reach the model (422), join the micro-batcher's bounded queue (503 with
Retry-After when it is full) and get their predictions from a shared forward pass, run in a thread or in
worker processes (see workers.py); a request not answered within the timeout gets a 504. Shutdown
(SIGINT/SIGTERM) stops accepting, lets uvicorn finish the requests in flight, then drains the queue.
"""

# no `from __future__ import annotations`: /predict's body type is made per model at run time, and FastAPI
# reads the endpoint's annotations as objects
import asyncio
import base64
import binascii
import hmac
import json
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model

import transferlab
from transferlab.deploy.batching import MicroBatcher, QueueFull, ShuttingDown
from transferlab.deploy.service_metrics import MetricsMiddleware, ServiceMetrics
from transferlab.deploy.workers import ModelRunner
from transferlab.errors import UserError

BEARER = HTTPBearer(auto_error=False)
IMAGE_FIELD = "image"  # the input field of image models: a base64-encoded image file


@dataclass(frozen=True)
class Limits:
    """What one request may hold, how requests are batched, and how much may wait."""

    max_items: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024  # inputs waiting for a forward pass; more: 503
    timeout_s: float = 10.0  # a request not answered by then: 504


def request_model(inputs: list[str], models: tuple[str, ...] = ()) -> type[BaseModel]:
    """The /predict body of a model whose input rows have the fields `inputs`: each field one value, or a list
    of values (one per input); a field the model does not read is refused. Over several adapters, `model`
    names the one that answers."""
    fields = {name: (str | list[str], Field(description=f"the {name} of one input, or a list of them"))
              for name in inputs}
    if models:
        fields["model"] = (Literal[models], Field(description=f"which model answers: {', '.join(models)}"))
    return create_model("PredictRequest", __config__=ConfigDict(extra="forbid"), **fields)


def check_value(name: str, value: str, limits: Limits) -> None:
    """Refuse an empty, too long or non-Unicode value (a lone surrogate cannot be tokenized)."""
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if len(value) > limits.max_chars:
        raise ValueError(f"{name} has {len(value):,} characters; the limit is {limits.max_chars:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate at character {err.start}): "
                         "send UTF-8 text") from None


def request_rows(request: BaseModel, inputs: list[str], limits: Limits) -> list[dict]:
    """The input rows of a request; ValueError (sent as 422, naming the item) for what the model cannot take."""
    values = {name: getattr(request, name) for name in inputs}
    if all(isinstance(v, str) for v in values.values()):
        columns = {name: [value] for name, value in values.items()}
    elif any(isinstance(v, str) for v in values.values()):
        raise ValueError(f"send every field ({', '.join(inputs)}) as one value, or every field as a list")
    else:
        columns = values
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        counts = " but ".join(f"{n} '{name}' values" for name, n in lengths.items())
        raise ValueError(f"{counts}: send one of each per input")
    count = lengths[inputs[0]]
    if count == 0:
        raise ValueError(f"'{inputs[0]}' is an empty list: send at least one input")
    if count > limits.max_items:
        raise ValueError(f"{count} inputs in one request; the limit is {limits.max_items}: split the request")
    for name, column in columns.items():
        for i, value in enumerate(column):
            if name == IMAGE_FIELD:
                column[i] = image_bytes(f"{name}[{i}]", value)
            else:
                check_value(f"{name}[{i}]", value, limits)
    return [dict(zip(inputs, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def image_bytes(name: str, value: str) -> bytes:
    """The bytes of a base64-encoded image file, checked (readable, within the pixel limit) before any batch holds
    it. Image fields are never file paths: the service opens nothing on its own disk for a client."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64: send the image file's bytes base64-encoded") from None
    if not data:
        raise ValueError(f"{name} is empty")
    from transferlab.data.images import check_image_bytes  # here: a text model's service never needs PIL

    try:
        check_image_bytes(data, None, name)
    except UserError as err:
        raise ValueError(str(err)) from None
    return data


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


def create_app(runner: ModelRunner, limits: Limits = Limits(), token: str | None = None) -> FastAPI:
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
              responses={401: {"description": "missing or wrong bearer token"},
                         422: {"description": "invalid request (the message names the item)"},
                         500: {"description": "the model failed on this request"},
                         503: {"description": "queue full or shutting down: retry after Retry-After seconds"},
                         504: {"description": "not answered within the timeout"}})
    async def predict(request: request_body) -> Response:
        try:
            rows = request_rows(request, info.inputs, limits)
            if info.models:
                rows = [{**row, "model": request.model} for row in rows]
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


def serve(runner: ModelRunner, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          token: str | None = None, log_level: str = "info") -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM; in-flight requests finish before exit."""
    import uvicorn

    if runner.workers == 0:
        # the inference thread holds the GIL between torch ops; a shorter switch interval lets the event loop
        # accept and parse requests while a batch runs
        sys.setswitchinterval(0.0005)
    uvicorn.run(create_app(runner, limits, token), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=30)
