"""Where the service's forward passes run: in a thread of the HTTP process, or in worker processes.

A forward pass holds the GIL for its Python parts (tokenization, decoding); in the HTTP process that time is
taken from the event loop parsing the next requests. Worker processes each load their own copy of the model
and take whole micro-batches over a pipe, so the HTTP process only parses, batches and answers.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from transferlab.deploy.served_model import ModelInfo, ModelSpec, ServedModel
from transferlab.errors import UserError

WORKER_START_TIMEOUT_S = 300


class InferenceError(RuntimeError):
    """A forward pass raised; the message names the exception raised where it ran."""


class ModelRunner(Protocol):
    """Runs forward passes for the micro-batcher: `concurrency` of them at once, in `workers` processes
    (0: in the HTTP process)."""

    info: ModelInfo
    concurrency: int
    workers: int

    async def predict(self, rows: list[dict]) -> list[dict]: ...

    def close(self) -> None: ...


class InProcessRunner:
    """Forward passes in one thread of the HTTP process (no extra memory; fine for light load and tests)."""

    concurrency = 1
    workers = 0

    def __init__(self, model: ServedModel):
        self.model = model
        self.info = model.info

    async def predict(self, rows: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self.model.predict, rows)

    def close(self) -> None:
        pass


def worker_main(spec: ModelSpec, conn) -> None:
    """A worker process: load the model, then answer each batch of rows sent over `conn` until it closes."""
    # the HTTP process decides when workers stop (after draining its queue): a Ctrl-C or SIGTERM sent to the
    # whole process group must not kill them under requests still in flight
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        model = ServedModel(spec)
    except UserError as err:
        conn.send(("user_error", (err.what, err.fix)))
        return
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", model.info))
    while True:
        try:
            rows = conn.recv()
        except EOFError:  # the HTTP process closed the pipe or died
            return
        try:
            conn.send(("ok", model.predict(rows)))
        except Exception as err:  # noqa: BLE001 - the error belongs to this batch, the worker goes on
            conn.send(("error", f"{type(err).__name__}: {err}"))


class Worker:
    """The HTTP process's handle on one worker process; restarts it when it dies."""

    def __init__(self, spec: ModelSpec, index: int):
        self.spec, self.index = spec, index
        self._spawn()

    def _spawn(self) -> None:
        # spawn, not fork: a forked copy of a process with torch / ONNX Runtime thread pools can deadlock
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(self.spec, child), daemon=True,
                                   name=f"transferlab-worker-{self.index}")
        self.process.start()
        child.close()

    def wait_ready(self) -> ModelInfo:
        """Block until the model is loaded; its loading error (a UserError stays one) if it failed."""
        if not self.conn.poll(WORKER_START_TIMEOUT_S):
            raise RuntimeError(f"worker {self.index} did not load the model in {WORKER_START_TIMEOUT_S} s")
        try:
            kind, payload = self.conn.recv()
        except EOFError as err:
            raise RuntimeError(f"worker {self.index} exited with code {self.process.exitcode} while loading "
                               "the model") from err
        if kind == "user_error":
            raise UserError(*payload)
        if kind == "error":
            raise RuntimeError(f"worker {self.index} could not load the model: {payload}")
        return payload

    def predict(self, rows: list[dict]) -> list[dict]:
        """Predictions for one batch (blocking); InferenceError if it raised or the process died on it."""
        if not self.process.is_alive():  # died while idle (killed from outside): not this batch's fault
            self.restart()
        try:
            self.conn.send(rows)
            kind, payload = self.conn.recv()
        except (EOFError, OSError) as err:
            code = self.process.exitcode
            self.restart()
            raise InferenceError(f"worker {self.index} died (exit code {code}) on this batch") from err
        if kind == "error":
            raise InferenceError(payload)
        return payload

    def restart(self) -> None:
        self.close()
        self._spawn()
        self.wait_ready()

    def close(self) -> None:
        self.conn.close()  # the worker sees EOF and returns
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerPool:
    """`size` worker processes, each running one forward pass at a time."""

    def __init__(self, spec: ModelSpec, size: int):
        self.concurrency = self.workers = size
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="transferlab-worker-io")
        self._idle: asyncio.Queue[Worker] | None = None
        self._workers = [Worker(spec, i) for i in range(size)]  # they load the model in parallel
        try:
            self.info = [w.wait_ready() for w in self._workers][0]
        except BaseException:
            self.close()
            raise

    async def predict(self, rows: list[dict]) -> list[dict]:
        if self._idle is None:  # created on first use: it belongs to the running event loop
            self._idle = asyncio.Queue()
            for worker in self._workers:
                self._idle.put_nowait(worker)
        worker = await self._idle.get()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, worker.predict, rows)
        finally:
            self._idle.put_nowait(worker)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._threads.shutdown()
