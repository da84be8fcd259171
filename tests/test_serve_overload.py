"""The service under failure and overload, over HTTP: a request that makes the model raise fails alone, a
full queue answers 503 with Retry-After, a request waiting too long answers 504 and leaves the queue."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_helpers import GatedModel, ServerThread, post_concurrently

from transferlab.deploy.served_model import ModelSpec, ServedModel
from transferlab.deploy.service import Limits, create_app
from transferlab.deploy.workers import InProcessRunner


@pytest.fixture(scope="module")
def model(tiny_run) -> ServedModel:
    return ServedModel(ModelSpec(str(tiny_run)))


def metric(url: str, line_start: str) -> float:
    """The value of the first /metrics sample line starting with `line_start`."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return float(next(line for line in lines if line.startswith(line_start)).rsplit(" ", 1)[1])


def test_a_failure_inside_a_batch_fails_only_its_request(model):
    texts = [f"Review {i}: {'moving' if i % 2 else 'tedious'} and long." for i in range(7)]
    bodies = [{"text": t} for t in texts[:4]] + [{"text": ["fine", "BOOM"]}] + [{"text": t} for t in texts[4:]]
    # a wide batching window: all eight requests land in one batch, which raises and is split
    with ServerThread(create_app(InProcessRunner(GatedModel(model)), Limits(max_wait_ms=500))) as running:
        responses = post_concurrently(running.url, bodies)
        failures = metric(running.url, "transferlab_batch_failures_total")
        batches = httpx.get(f"{running.url}/health", timeout=10).json()["batches"]
    assert [r.status_code for r in responses] == [200] * 4 + [500] + [200] * 3
    assert "the model failed on this request" in responses[4].json()["detail"]
    ok = responses[:4] + responses[5:]
    expected = model.predict([{"text": t} for t in texts])
    assert [r.json()["predictions"][0]["label"] for r in ok] == [p["label"] for p in expected]
    assert failures >= 2 and batches >= 2  # the shared batch failed, then its halves ran apart


def test_a_full_queue_answers_503_with_retry_after(model):
    gated = GatedModel(model)
    limits = Limits(max_batch=1, max_queue=2, max_wait_ms=0)
    with ServerThread(create_app(InProcessRunner(gated), limits)) as running:
        result: dict = {}

        def call(name: str, text: str) -> None:
            result[name] = httpx.post(f"{running.url}/predict", json={"text": text}, timeout=60)

        first = threading.Thread(target=call, args=("running", "WAIT: in the model"))
        first.start()
        assert gated.entered.wait(30)
        queued = [threading.Thread(target=call, args=(f"queued{i}", f"Queued review {i}.")) for i in range(2)]
        for thread in queued:
            thread.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{running.url}/health").json()["queued"] < 2:
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.02)
        refused = httpx.post(f"{running.url}/predict", json={"text": "One too many."}, timeout=60)
        depth = metric(running.url, "transferlab_queue_depth")
        gated.release()
        for thread in (first, *queued):
            thread.join(60)
    assert refused.status_code == 503 and "queue is full" in refused.json()["detail"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert depth == 2
    assert [result[k].status_code for k in ("running", "queued0", "queued1")] == [200, 200, 200]


def test_a_request_waiting_too_long_gets_504_and_leaves_the_queue(model):
    gated = GatedModel(model)
    limits = Limits(max_batch=1, max_wait_ms=0, timeout_s=0.5)
    with ServerThread(create_app(InProcessRunner(gated), limits)) as running:
        blocker: dict = {}
        first = threading.Thread(target=lambda: blocker.update(
            response=httpx.post(f"{running.url}/predict", json={"text": "WAIT: holds the model"}, timeout=60)))
        first.start()
        assert gated.entered.wait(30)
        start = time.monotonic()
        waited = httpx.post(f"{running.url}/predict", json={"text": "Stuck behind it."}, timeout=60)
        elapsed = time.monotonic() - start
        queued_after = httpx.get(f"{running.url}/health").json()["queued"]
        gated.release()
        first.join(60)
        after = httpx.post(f"{running.url}/predict", json={"text": "Served again."}, timeout=60)
        batches = httpx.get(f"{running.url}/health").json()["batches"]
    assert waited.status_code == 504 and "not answered within 0.5 s" in waited.json()["detail"]
    assert 0.4 < elapsed < 5
    assert queued_after == 0  # it left the queue when it gave up: its text is never run
    assert blocker["response"].status_code == 504  # it too outlived the timeout, inside the model
    assert after.status_code == 200
    assert batches == 2  # the blocked batch and the last request; the timed-out one never ran
