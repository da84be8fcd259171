"""Prometheus metrics of the service (prometheus-client), in a registry of its own per app.

Requests are counted by endpoint and status code (the errors are the 4xx / 5xx codes), with a latency
histogram; the micro-batcher reports batch sizes, forward-pass durations, failed passes and the queue depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's counters, histograms and gauges, rendered in the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("transferlab_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "code"], registry=registry)
        self.latency = Histogram("transferlab_request_duration_seconds", "Time to answer a request, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.inputs = Counter("transferlab_inputs", "Inputs predicted (a text, a text pair, a question...)",
                              registry=registry)
        self.batch_size = Histogram("transferlab_batch_size", "Inputs per micro-batch sent to the model",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.batch_duration = Histogram("transferlab_batch_duration_seconds", "Time the model took per micro-batch",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_failures = Counter("transferlab_batch_failures",
                                      "Micro-batches whose forward pass raised (their requests are retried apart)",
                                      registry=registry)
        self.queue_depth = Gauge("transferlab_queue_depth", "Inputs waiting for a forward pass", registry=registry)

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from `depth` at every scrape."""
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every HTTP response by endpoint and status code, and timing it."""

    def __init__(self, app, metrics: ServiceMetrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            # unknown paths share one label: a scanner must not grow the metrics without bound
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
