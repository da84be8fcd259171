"""`transferlab serve` as a user starts it: a real process whose inference runs in a worker process, with the
token taken from the environment; a killed worker is replaced, and SIGINT stops server and worker cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from serve_helpers import free_port, post_concurrently

from transferlab.deploy.served_model import ModelSpec, ServedModel

TOKEN = "worker-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}: {proc.stderr.read()}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server was not ready after {timeout} s")


def worker_pids(proc: subprocess.Popen) -> list[int]:
    return [p.pid for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


def wait_for(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def server(tiny_run):
    port = free_port()
    env = {**os.environ, "TRANSFERLAB_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "transferlab.cli", "serve", str(tiny_run), "--port", str(port),
                             "--workers", "1", "--max-wait-ms", "200", "--precision", "fp32",
                             "--timeout-s", "300"],  # a replaced worker loads the model before it answers
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_cli_server_with_a_worker_process(server, tiny_run):
    proc, url = server
    assert httpx.get(f"{url}/metadata", timeout=30).status_code == 401
    meta = httpx.get(f"{url}/metadata", headers=AUTH, timeout=30).json()
    assert meta["workers"] == 1 and meta["task"] == "classification"

    texts = [f"Review {i}: {'superb' if i % 3 else 'dismal'} story." for i in range(6)]
    responses = post_concurrently(url, [{"text": t} for t in texts], headers=AUTH)
    assert all(r.status_code == 200 for r in responses)
    expected = ServedModel(ModelSpec(str(tiny_run), precision="fp32")).predict([{"text": t} for t in texts])
    got = [r.json()["predictions"][0] for r in responses]
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in expected], abs=1e-5)

    # a worker killed from outside is replaced; the next request does not notice
    (first,) = worker_pids(proc)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE)
    again = httpx.post(f"{url}/predict", json={"text": texts[0]}, headers=AUTH, timeout=120)
    assert again.status_code == 200 and again.json()["predictions"][0]["label"] == expected[0]["label"]
    (second,) = worker_pids(proc)
    assert second != first

    # Ctrl-C reaches the whole process group: the server drains, then closes its worker, which ignored it
    worker = psutil.Process(second)
    for pid in (proc.pid, second):
        os.kill(pid, signal.SIGINT)
    assert proc.wait(60) == 0
    wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, timeout=30)
