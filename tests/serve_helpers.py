"""Shared by the service tests: a real uvicorn server on a free loopback port, concurrent clients, and a
model wrapper whose chosen texts block or raise (to force queueing, timeouts and failures inside a batch)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import uvicorn

from transferlab.deploy.served_model import ServedModel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """uvicorn serving an app on a free loopback port, in a background thread."""

    def __init__(self, app):
        self.port = free_port()
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


JSON = {"content-type": "application/json"}


def json_body(body: dict) -> str:
    """`body` as JSON text the way most clients write it: non-ASCII as \\u escapes, so a lone surrogate
    travels as the escape "\\ud800" (httpx's json= would fail to encode it)."""
    return json.dumps(body)


def post_concurrently(url: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    """POST every body to /predict at once (one connection each) and return the responses in order."""

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as http:
            return await asyncio.gather(*(http.post("/predict", content=json_body(body), headers=JSON)
                                          for body in bodies))

    return asyncio.run(fire())


class GatedModel:
    """The real model, except that a batch holding the text BOOM raises and one holding a text starting with
    WAIT blocks until `release()`."""

    def __init__(self, model: ServedModel):
        self.model, self.info = model, model.info
        self.gate = threading.Event()
        self.entered = threading.Event()  # set when a batch with a WAIT text has started

    def predict(self, rows: list[dict]) -> list[dict]:
        texts = [row["text"] for row in rows]
        if "BOOM" in texts:
            raise RuntimeError("forced failure")
        if any(text.startswith("WAIT") for text in texts):
            self.entered.set()
            assert self.gate.wait(60), "the test never released the gate"
        return self.model.predict(rows)

    def release(self) -> None:
        self.gate.set()
