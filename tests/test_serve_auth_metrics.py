"""Bearer-token auth and Prometheus metrics of the service, over HTTP."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import ServerThread, post_concurrently

from transferlab.deploy.served_model import ModelSpec, ServedModel
from transferlab.deploy.service import Limits, create_app
from transferlab.deploy.workers import InProcessRunner

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def model(tiny_run) -> ServedModel:
    return ServedModel(ModelSpec(str(tiny_run)))


def test_a_token_guards_every_endpoint_but_health(model):
    with ServerThread(create_app(InProcessRunner(model), Limits(), token=TOKEN)) as running:
        def call(method: str, path: str, token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            body = {"json": {"text": "A film."}} if method == "POST" else {}
            return httpx.request(method, f"{running.url}{path}", headers=headers, timeout=60, **body)

        for method, path in (("POST", "/predict"), ("GET", "/metadata"), ("GET", "/metrics")):
            missing, wrong, right = (call(method, path, t) for t in (None, "s3cret-guess", TOKEN))
            assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer", path
            assert wrong.status_code == 401, path
            assert right.status_code == 200, path
        assert call("GET", "/health", None).status_code == 200
        basic = httpx.post(f"{running.url}/predict", json={"text": "A film."}, auth=("user", TOKEN), timeout=60)
        assert basic.status_code == 401  # the token only counts as a bearer token


def test_without_a_token_nothing_asks_for_one(model):
    with ServerThread(create_app(InProcessRunner(model))) as running:
        assert httpx.get(f"{running.url}/metadata", timeout=60).status_code == 200


def samples(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed with prometheus_client's own parser: (name, labels) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_codes_batches_and_latency(model):
    with ServerThread(create_app(InProcessRunner(model), Limits(max_wait_ms=200))) as running:
        before = samples(running.url)
        responses = post_concurrently(running.url, [{"text": f"Review {i}, quite good."} for i in range(5)]
                                      + [{"text": ""}])
        after = samples(running.url)
    assert sorted(r.status_code for r in responses) == [200] * 5 + [422]

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("transferlab_requests_total", endpoint="/predict", code="200") == 5
    assert grew("transferlab_requests_total", endpoint="/predict", code="422") == 1
    assert grew("transferlab_inputs_total") == 5
    assert grew("transferlab_request_duration_seconds_count", endpoint="/predict") == 6
    assert grew("transferlab_request_duration_seconds_bucket", endpoint="/predict", le="+Inf") == 6
    assert grew("transferlab_batch_size_sum") == 5
    assert 1 <= grew("transferlab_batch_size_count") < 5  # the five requests shared forward passes
    assert grew("transferlab_batch_duration_seconds_count") == grew("transferlab_batch_size_count")
    assert after[("transferlab_queue_depth", ())] == 0
    assert after[("transferlab_batch_failures_total", ())] == 0
