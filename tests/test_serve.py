"""The HTTP service, started for real on a loopback port and called over HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from transferlab.deploy.predictor import Predictor
from transferlab.deploy.service import Limits, create_app

LIMITS = Limits(max_items=8, max_chars=200, max_body_bytes=4_000, max_batch=32, max_wait_ms=20)


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor(tiny_run)


@pytest.fixture(scope="module")
def server(predictor):
    with ServerThread(create_app(predictor, LIMITS)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def test_health_and_metadata(client, predictor):
    assert client.get("/health").json()["status"] == "ok"
    meta = client.get("/metadata").json()
    assert meta["labels"] == predictor.labels and meta["task"] == "classification"
    assert meta["backbone"] == "bert" and meta["version"] and meta["limits"]["max_items"] == LIMITS.max_items
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/health", "/metadata"}


def test_predict_one_text_and_a_list(client, predictor):
    texts = ["A triumph.", "Boring and far too long."]
    one = client.post("/predict", json={"text": texts[0]})
    assert one.status_code == 200
    assert [p["label"] for p in one.json()["predictions"]] == [predictor.predict(texts[:1])[0]["label"]]
    many = client.post("/predict", json={"text": texts}).json()["predictions"]
    expected = predictor.predict(texts)
    assert [p["label"] for p in many] == [p["label"] for p in expected]
    assert [p["score"] for p in many] == pytest.approx([p["score"] for p in expected], abs=1e-5)


@pytest.mark.parametrize(("body", "message"), [
    ({"text": "   "}, "text[0] is empty"),
    ({"text": []}, "empty list"),
    ({"text": ["ok"] * 9}, "the limit is 8"),
    ({"text": ["fine", "x" * 201]}, "text[1] has 201 characters"),
    ({"text": ["a", "b"], "text_pair": ["c"]}, "2 texts but 1 text pairs"),
])
def test_invalid_requests_get_422_with_a_message(client, body, message):
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_malformed_requests_get_422(client):
    assert client.post("/predict", json={"text": 5}).status_code == 422
    assert client.post("/predict", json={"texts": ["typo in the field name"]}).status_code == 422


def test_oversized_body_gets_413(client):
    big = {"text": ["y" * 150] * 40}
    assert client.post("/predict", json=big).status_code == 413

    def chunks():  # streamed without Content-Length: counted as it arrives
        yield b'{"text": ["'
        for _ in range(50):
            yield b"z" * 100
        yield b'"]}'

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_concurrent_requests_are_micro_batched(server, client, predictor):
    before = client.get("/health").json()
    texts = [f"Review number {i}: {'great' if i % 2 else 'dreadful'} film." for i in range(16)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/predict", json={"text": t}) for t in texts))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    labels = [r.json()["predictions"][0]["label"] for r in responses]
    assert labels == [p["label"] for p in predictor.predict(texts)]
    after = client.get("/health").json()
    assert after["texts"] - before["texts"] == 16
    assert after["batches"] - before["batches"] < 16  # several requests shared a forward pass


def test_shutdown_finishes_requests_in_flight(predictor):
    # a long batching window keeps the request queued while shutdown starts
    slow = Limits(max_wait_ms=1500)
    with ServerThread(create_app(predictor, slow)) as running:
        result: dict = {}

        def call() -> None:
            result["response"] = httpx.post(f"{running.url}/predict", json={"text": "Still answered."}, timeout=60)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        running.server.should_exit = True
        caller.join(60)
    assert result["response"].status_code == 200
    assert result["response"].json()["predictions"][0]["label"] in predictor.labels
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/health", timeout=5)
