"""Our service against a naive per-request `transformers.pipeline` server, under the same concurrent load.

    python benchmarks/serve_load.py runs/demo [--requests 600] [--concurrency 32] [--serve torch,onnx-int8]

Our service is measured in each --serve configuration (torch = fp32 weights, bf16 autocast where the CPU
has it; onnx-int8 = the quantized model `transferlab quantize` writes, which must exist; also onnx,
torchscript, torch-fp32).

Both servers run as subprocesses on loopback ports, one after the other (never competing for the CPU); the
same bounded load (at most --concurrency requests in flight, one review per request, real eval texts) drives
each. Prints requests/s, p50/p99 latency and errors for each server and the throughput ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

TRANSFERLAB = Path(sys.executable).with_name("transferlab")


def naive_app(model_dir: str):
    """What a first deployment often looks like: one pipeline, called once per request, no batching."""
    from fastapi import FastAPI
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_dir, trust_remote_code=True, device=-1)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict) -> dict:  # a sync endpoint: FastAPI runs each call in its thread pool
        return {"predictions": classify(body["text"])}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # graceful: finish in-flight requests
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def drive(url: str, texts: list[str], requests: int, concurrency: int) -> dict:
    """Send `requests` single-text requests with at most `concurrency` in flight; latency and errors."""
    latencies: list[float] = []
    errors = 0
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while queue:
                i = queue.pop()
                start = time.perf_counter()
                try:
                    response = await client.post("/predict", json={"text": texts[i % len(texts)]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests_per_s": requests / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors, "seconds": elapsed}


def measure(name: str, command: list[str], url: str, texts: list[str], args) -> dict:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_ready(url, proc)
        asyncio.run(drive(url, texts, args.concurrency * 2, args.concurrency))  # warm-up
        result = asyncio.run(drive(url, texts, args.requests, args.concurrency))
    finally:
        stop(proc)
    print(f"{name:<34} {result['requests_per_s']:>8.1f} req/s   p50 {result['p50_ms']:>7.1f} ms   "
          f"p99 {result['p99_ms']:>7.1f} ms   errors {result['errors']}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory (with model/ and config.yaml)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", default="torch,onnx-int8", help="our service's configurations, comma-separated")
    parser.add_argument("--threads", type=int, help="inference threads of our service (default: torch's)")
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        import uvicorn

        uvicorn.run(naive_app(args.run), host="127.0.0.1", port=args.port, log_level="warning")
        return

    from transferlab.deploy.artifacts import model_dir_of
    from transferlab.deploy.evalset import load_eval_set

    run = Path(args.run)
    texts = load_eval_set(run).texts
    print(f"{args.requests} requests, {args.concurrency} in flight, one review per request, "
          f"{os.cpu_count()} cores\n", flush=True)
    results = {}
    for config in args.serve.split(","):
        backend, _, variant = config.partition("-")
        flags = ["--int8"] if variant == "int8" else ["--precision", "fp32"] if variant == "fp32" else []
        port = free_port()
        command = [str(TRANSFERLAB), "serve", str(run), "--port", str(port), "--backend", backend, *flags,
                   *(["--threads", str(args.threads)] if args.threads else [])]
        results[config] = measure(f"transferlab serve ({config})", command, f"http://127.0.0.1:{port}", texts, args)
    port = free_port()
    naive_cmd = [sys.executable, __file__, str(model_dir_of(run)), "--naive-server", "--port", str(port)]
    naive = measure("naive pipeline server (torch)", naive_cmd, f"http://127.0.0.1:{port}", texts, args)
    print()
    for config, ours in results.items():
        print(f"throughput ratio, {config}: {ours['requests_per_s'] / naive['requests_per_s']:.1f}x "
              f"(target >= 3x with zero errors)")


if __name__ == "__main__":
    main()
