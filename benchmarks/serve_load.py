"""Our service against a naive per-request `transformers.pipeline` server, under the same concurrent load.

    python benchmarks/serve_load.py runs/demo [--requests 600] [--concurrency 32] [--rounds 3]
        [--serve onnx-int8@1,onnx-int8@0,torch@1] [--client raw|httpx]

Each --serve configuration is BACKEND[-VARIANT][@WORKERS]: torch (fp32 weights, bf16 autocast where the CPU
has it), torch-fp32, onnx, onnx-int8 (the file `transferlab quantize` writes, which must exist), torchscript,
...; @N runs inference in N worker processes (@0: in a thread of the HTTP process; default: serve's default).

Every server runs as a subprocess on a loopback port, one after the other (never competing with each other);
the same bounded load (at most --concurrency requests in flight, one real eval review per request) drives each,
and with --rounds > 1 the servers take turns again, so a noisy machine hits all of them alike. The load
generator shares the machine's cores with the server: the default `raw` client (keep-alive HTTP/1.1 over
asyncio streams on uvloop) costs about 0.1 ms of CPU per request where httpx costs about 4.5 ms, as much as
the server itself; `--client httpx` measures with httpx. Printed per server: requests/s, p50/p99 latency,
errors, CPU ms per request of the server (all its processes) and of the load generator, and the cores that
other processes on the machine used meanwhile. Then each configuration's throughput ratio to the naive server
(median and range over rounds), and the int8 model's in-process batch-1 latency (the figure serving must not
cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import uvloop

TRANSFERLAB = Path(sys.executable).with_name("transferlab")
REQUEST_HEAD = (b"POST /predict HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n")


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


async def raw_post(port: int, bodies: list[bytes], next_index, record) -> None:
    """One keep-alive connection sending requests until `next_index()` says stop (None); reconnects when the
    server closes it. `record(seconds, ok)` per request."""
    reader = writer = None
    while (i := next_index()) is not None:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = bodies[i % len(bodies)]
            writer.write(REQUEST_HEAD % len(body) + body)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
            headers = dict(line.split(":", 1) for line in head[1:] if ":" in line)
            await reader.readexactly(int(headers["content-length"]))
            ok = head[0].split()[1] == "200"
            if headers.get("connection", "").strip() == "close":
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
            ok, writer = False, None
        record(time.perf_counter() - start, ok)
    if writer is not None:
        writer.close()


async def httpx_post(client: httpx.AsyncClient, bodies: list[bytes], next_index, record) -> None:
    while (i := next_index()) is not None:
        start = time.perf_counter()
        try:
            response = await client.post("/predict", content=bodies[i % len(bodies)],
                                         headers={"content-type": "application/json"})
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        record(time.perf_counter() - start, ok)


async def drive(port: int, texts: list[str], requests: int, concurrency: int, client: str) -> dict:
    """Send `requests` single-text requests with at most `concurrency` in flight; latency and errors."""
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    latencies: list[float] = []
    errors = 0
    left = iter(range(requests))

    def record(seconds: float, ok: bool) -> None:
        nonlocal errors
        latencies.append(seconds)
        errors += not ok

    def next_index() -> int | None:
        return next(left, None)

    start = time.perf_counter()
    if client == "raw":
        await asyncio.gather(*(raw_post(port, bodies, next_index, record) for _ in range(concurrency)))
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as http:
            await asyncio.gather(*(httpx_post(http, bodies, next_index, record) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests_per_s": requests / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": errors, "seconds": elapsed}


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its children (a server's worker processes)."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used (all cores), from the kernel's counters."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def measure(name: str, command: list[str], port: int, texts: list[str], args) -> dict:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        run = uvloop.run if args.client == "raw" else asyncio.run
        run(drive(port, texts, args.concurrency * 4, args.concurrency, args.client))  # warm-up
        server = psutil.Process(proc.pid)
        before = cpu_seconds(server), own_cpu_seconds(), busy_cpu_seconds()
        result = run(drive(port, texts, args.requests, args.concurrency, args.client))
        after = cpu_seconds(server), own_cpu_seconds(), busy_cpu_seconds()
    finally:
        stop(proc)
    server_s, generator_s, busy_s = (b - a for a, b in zip(before, after, strict=True))
    result.update(server_cpu_ms=1000 * server_s / args.requests, client_cpu_ms=1000 * generator_s / args.requests,
                  other_cores=max(0.0, busy_s - server_s - generator_s) / result["seconds"])
    print(f"{name:<32} {result['requests_per_s']:>7.1f} req/s  p50 {result['p50_ms']:>6.1f} ms  "
          f"p99 {result['p99_ms']:>7.1f} ms  errors {result['errors']}  CPU/request: server "
          f"{result['server_cpu_ms']:.2f} ms, client {result['client_cpu_ms']:.2f} ms  "
          f"(other processes: {result['other_cores']:.2f} cores)", flush=True)
    return result


def serve_command(run: Path, config: str, port: int, threads: int | None) -> list[str]:
    """The `transferlab serve` command line of one BACKEND[-VARIANT][@WORKERS] configuration."""
    name, _, workers = config.partition("@")
    backend, _, variant = name.partition("-")
    flags = ["--int8"] if variant == "int8" else ["--precision", "fp32"] if variant == "fp32" else []
    return [str(TRANSFERLAB), "serve", str(run), "--port", str(port), "--backend", backend, *flags,
            *(["--workers", workers] if workers else []), *(["--threads", str(threads)] if threads else [])]


def int8_batch1_p50_ms(model_dir: Path, frame) -> float | None:
    """In-process batch-1 p50 latency of the ONNX int8 model, measured as `transferlab benchmark` does."""
    import torch

    from transferlab.deploy.benchmark import latencies
    from transferlab.deploy.predictor import Predictor

    if not (model_dir / "model.int8.onnx").is_file():
        return None
    predictor = Predictor(model_dir, "onnx", True, threads=torch.get_num_threads())
    return float(np.percentile(latencies(predictor, frame, repeats=200, warmup=20), 50) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory (with model/ and config.yaml)")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="times every server is measured, taking turns")
    parser.add_argument("--serve", default="onnx-int8,torch",
                        help="our service's configurations, comma-separated (BACKEND[-VARIANT][@WORKERS])")
    parser.add_argument("--threads", type=int, help="inference threads per worker of our service")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw", help="the load generator")
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
    frame = load_eval_set(run).frame
    texts = frame["text"].astype(str).tolist()
    configs = args.serve.split(",")
    print(f"{args.requests} requests, {args.concurrency} in flight, one review per request, {os.cpu_count()} cores, "
          f"{args.client} load generator, {args.rounds} round(s)\n", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in [*configs, "naive"]}
    for _ in range(args.rounds):
        for config in configs:
            port = free_port()
            results[config].append(measure(f"transferlab serve ({config})", serve_command(run, config, port,
                                                                                          args.threads),
                                           port, texts, args))
        port = free_port()
        naive_cmd = [sys.executable, __file__, str(model_dir_of(run)), "--naive-server", "--port", str(port)]
        results["naive"].append(measure("naive pipeline server (torch)", naive_cmd, port, texts, args))
    print()
    for config in configs:
        ratios = [ours["requests_per_s"] / naive["requests_per_s"]
                  for ours, naive in zip(results[config], results["naive"], strict=True)]
        errors = sum(r["errors"] for r in results[config])
        print(f"throughput ratio, {config}: {np.median(ratios):.1f}x (rounds: {min(ratios):.1f}-{max(ratios):.1f}x), "
              f"{errors} errors (target >= 5x with zero errors)")
    p50 = int8_batch1_p50_ms(model_dir_of(run), frame)
    if p50 is not None:
        print(f"ONNX int8 in-process batch-1 p50: {p50:.2f} ms (target <= 2.7 ms on a quiet machine)")


if __name__ == "__main__":
    main()
