"""The HTTP service: FastAPI over a Predictor, with request validation and micro-batching.

Concurrent requests wait in an asyncio queue for at most a few milliseconds; the batcher joins them into one
forward pass that runs in a worker thread (the event loop keeps accepting requests meanwhile), then hands each
request its own predictions. While a forward pass runs, new requests pile up and form the next batch, so the
batch size follows the load by itself. Shutdown (SIGINT/SIGTERM) stops accepting, lets uvicorn finish the
requests in flight, then drains the queue before the process exits.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

import transferlab
from transferlab.deploy.predictor import Predictor


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how requests are batched."""

    max_items: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_batch: int = 64
    max_wait_ms: float = 5.0


def predict_texts(predictor: Predictor, texts: list[str], pairs: list[str] | None) -> list[dict]:
    """The predictor's predictions for texts (and their pairs): the one place the service calls the model."""
    rows = [{"text": t} for t in texts] if pairs is None else \
        [{"text": t, "text_pair": p} for t, p in zip(texts, pairs, strict=True)]
    return predictor.predict(rows)


class PredictRequest(BaseModel):
    """One text or a list of texts (and, for sentence-pair models, the matching second texts)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "A wonderful, moving film."}, {"text": ["Loved it.", "Two hours I will never get back."]}]})

    text: str | list[str] = Field(description="a text, or a list of texts")
    text_pair: str | list[str] | None = Field(None, description="second text(s) of sentence-pair models")

    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else self.text

    def pairs(self) -> list[str] | None:
        if self.text_pair is None:
            return None
        return [self.text_pair] if isinstance(self.text_pair, str) else self.text_pair


def validate_request(request: PredictRequest, limits: Limits) -> None:
    """Refuse empty, too many or too long texts with a message naming the item (sent as 422)."""
    texts, pairs = request.texts(), request.pairs()
    if not texts:
        raise ValueError("'text' is an empty list: send at least one text")
    if len(texts) > limits.max_items:
        raise ValueError(f"{len(texts)} texts in one request; the limit is {limits.max_items}: split the request")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs: send one pair per text")
    for name, values in (("text", texts), ("text_pair", pairs or [])):
        for i, value in enumerate(values):
            if not value.strip():
                raise ValueError(f"{name}[{i}] is empty")
            if len(value) > limits.max_chars:
                raise ValueError(f"{name}[{i}] has {len(value):,} characters; the limit is {limits.max_chars:,}")


@dataclass
class _Job:
    texts: list[str]
    pairs: list[str] | None
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Joins the texts of concurrent requests into batched forward passes in one worker thread."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_ms: float):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0
        self.texts = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Answer every queued request, then stop."""
        while not self.queue.empty():
            await self._run(self._take_ready([]))
        if self._task is not None:
            self._task.cancel()

    async def submit(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        job = _Job(texts, pairs, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    def _take_ready(self, jobs: list[_Job]) -> list[_Job]:
        size = sum(len(j.texts) for j in jobs)
        while size < self.max_batch and not self.queue.empty():
            jobs.append(self.queue.get_nowait())
            size += len(jobs[-1].texts)
        return jobs

    async def _collect(self) -> list[_Job]:
        jobs = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while sum(len(j.texts) for j in self._take_ready(jobs)) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return jobs

    async def _loop(self) -> None:
        while True:
            await self._run(await self._collect())

    async def _run(self, jobs: list[_Job]) -> None:
        # a batch is tokenized as a whole, so texts with and without pairs go in separate passes
        for with_pairs in (False, True):
            group = [j for j in jobs if (j.pairs is not None) == with_pairs and not j.future.done()]
            if not group:
                continue
            texts = [t for j in group for t in j.texts]
            pairs = [p for j in group for p in j.pairs] if with_pairs else None
            try:
                results = await asyncio.to_thread(predict_texts, self.predictor, texts, pairs)
            except Exception as err:  # noqa: BLE001 - the error belongs to the requests, not to the batcher
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.batches += 1
            self.texts += len(texts)
            start = 0
            for job in group:
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(results[start:start + len(job.texts)])
                start += len(job.texts)


def create_app(predictor: Predictor, limits: Limits = Limits()) -> FastAPI:
    """The FastAPI application serving `predictor`."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher = MicroBatcher(predictor, limits.max_batch, limits.max_wait_ms)
        batcher.start()
        state.update(batcher=batcher, started=time.time())
        yield
        await batcher.stop()

    # max_body_size: 413 by Content-Length, or while a body without one streams in
    app = FastAPI(title="transferlab model service", version=transferlab.__version__, lifespan=lifespan,
                  max_body_size=limits.max_body_bytes,
                  description=f"{predictor.task.name} with a fine-tuned {predictor.metadata()['backbone']} "
                              f"({predictor.name}); labels: {', '.join(predictor.labels or [])}.")

    @app.post("/predict", summary="Predict labels for one text or a list of texts")
    async def predict(request: PredictRequest) -> dict:
        try:
            validate_request(request, limits)
        except ValueError as err:
            raise HTTPException(422, str(err)) from err
        return {"predictions": await state["batcher"].submit(request.texts(), request.pairs())}

    @app.get("/health", summary="Liveness: the model is loaded and the batcher runs")
    async def health() -> dict:
        batcher: MicroBatcher = state["batcher"]
        return {"status": "ok", "uptime_s": round(time.time() - state["started"], 1),
                "queued": batcher.queue.qsize(), "batches": batcher.batches, "texts": batcher.texts}

    @app.get("/metadata", summary="The model: task, labels, backbone, backend, limits, version")
    async def metadata() -> dict:
        return {**predictor.metadata(), "version": transferlab.__version__,
                "limits": {"max_items": limits.max_items, "max_chars": limits.max_chars,
                           "max_body_bytes": limits.max_body_bytes},
                "batching": {"max_batch": limits.max_batch, "max_wait_ms": limits.max_wait_ms}}

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(),
          log_level: str = "info") -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM; in-flight requests finish before exit."""
    import uvicorn

    # the inference thread holds the GIL between torch ops; a shorter switch interval lets the event loop
    # accept and parse requests while a batch runs, so they are queued for the next batch sooner
    sys.setswitchinterval(0.0005)
    uvicorn.run(create_app(predictor, limits), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=30)
