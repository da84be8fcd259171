"""Micro-batching with a bounded queue: concurrent requests share forward passes, a bad one fails alone.

A request's rows join a queue (bounded in rows: past it, QueueFull). A batch starts when a runner slot is free
and either `max_batch` rows wait or the oldest has waited `max_wait_ms`; while the runners are busy, arrivals
pile up and form the next batch, so batches grow with the load by themselves. When a batch raises, its
requests are split in halves and retried apart until the failing request is alone: it alone gets the error.
A request that gives up (its timeout) leaves the queue at once and its rows are never run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field

from transferlab.deploy.service_metrics import ServiceMetrics
from transferlab.deploy.workers import ModelRunner

RATE_SMOOTHING = 0.2  # weight of the newest batch in the moving average of seconds per row


class QueueFull(Exception):
    """The queue holds too many rows to take this request; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(Exception):
    """The service is stopping and takes no new work."""


@dataclass(eq=False)
class _Job:
    rows: list[dict]
    future: asyncio.Future = field(repr=False)
    arrived: float
    queued: bool = True  # its rows still count in the queue depth


class MicroBatcher:
    """Joins the rows of concurrent requests into batches run by `runner`, with a bounded queue."""

    def __init__(self, runner: ModelRunner, metrics: ServiceMetrics, max_batch: int, max_wait_ms: float,
                 max_queue: int):
        self.runner, self.metrics = runner, metrics
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.queued = 0  # rows waiting
        self.batches = 0
        self.rows_done = 0
        self._jobs: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(runner.concurrency)
        self._running: set[asyncio.Task] = set()
        self._seconds_per_row: float | None = None
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def submit(self, rows: list[dict]) -> asyncio.Future:
        """Queue one request's rows; its future gets one prediction per row. QueueFull / ShuttingDown if
        refused. Cancelling the future takes the request out of the queue."""
        if self._closing:
            raise ShuttingDown("the service is shutting down")
        if self.queued + len(rows) > self.max_queue:
            raise QueueFull(self.retry_after_s())
        job = _Job(rows, asyncio.get_running_loop().create_future(), time.monotonic())
        job.future.add_done_callback(lambda _future: self._dequeue(job))
        self._jobs.append(job)
        self.queued += len(rows)
        self._arrived.set()
        return job.future

    def retry_after_s(self) -> int:
        """Whole seconds the queued rows need at the recent pace (at least 1)."""
        per_row = self._seconds_per_row or 0.0
        return max(1, math.ceil(self.queued * per_row / self.runner.concurrency))

    async def close(self) -> None:
        """Refuse new work, answer everything queued or running, then stop."""
        self._closing = True
        while self._jobs or self._running:
            self._arrived.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()

    def _dequeue(self, job: _Job) -> None:
        if job.queued:
            job.queued = False
            self.queued -= len(job.rows)

    async def _loop(self) -> None:
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            await self._fill(self._jobs[0].arrived + self.max_wait)
            jobs = self._take()
            if jobs:
                task = asyncio.create_task(self._run(jobs))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            else:  # every queued request gave up meanwhile
                self._slots.release()

    async def _fill(self, deadline: float) -> None:
        """Wait until a full batch is queued or the deadline passes (at once when closing)."""
        while self.queued < self.max_batch and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Job]:
        jobs: list[_Job] = []
        size = 0
        while self._jobs and (not jobs or size + len(self._jobs[0].rows) <= self.max_batch):
            job = self._jobs.popleft()
            if job.future.done():  # gave up while queued
                continue
            self._dequeue(job)
            jobs.append(job)
            size += len(job.rows)
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        try:
            await self._run_apart(jobs)
        finally:
            self._slots.release()

    async def _run_apart(self, jobs: list[_Job]) -> None:
        """Run the jobs as one batch; if it raises, run each half apart, down to the failing job alone."""
        jobs = [job for job in jobs if not job.future.done()]
        if not jobs:
            return
        rows = [row for job in jobs for row in job.rows]
        start = time.perf_counter()
        try:
            results = await self.runner.predict(rows)
        except Exception as err:  # noqa: BLE001 - the error belongs to one of the requests, not to the batcher
            self.metrics.batch_failures.inc()
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(err)
                return
            half = len(jobs) // 2
            await self._run_apart(jobs[:half])
            await self._run_apart(jobs[half:])
            return
        self._record(len(rows), time.perf_counter() - start)
        offset = 0
        for job in jobs:
            if not job.future.done():  # it may have timed out while its batch ran
                job.future.set_result(results[offset:offset + len(job.rows)])
            offset += len(job.rows)

    def _record(self, rows: int, seconds: float) -> None:
        self.batches += 1
        self.rows_done += rows
        self.metrics.inputs.inc(rows)
        self.metrics.batch_size.observe(rows)
        self.metrics.batch_duration.observe(seconds)
        per_row = seconds / rows
        self._seconds_per_row = per_row if self._seconds_per_row is None else (
            RATE_SMOOTHING * per_row + (1 - RATE_SMOOTHING) * self._seconds_per_row)
