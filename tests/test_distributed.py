"""Multi-process training through `accelerate launch`: two CPU processes (gloo) train one model end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

ACCELERATE = Path(sys.executable).parent / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_cpu_processes(tmp_path):
    # On a machine without GPUs `--multi_gpu` starts the processes (torchrun) and transferlab joins them as
    # CPU workers; accelerate's own `--cpu` flag would start a single process.
    launch = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    train = ["-m", "transferlab.cli", "train", "--max-train-examples", "64", "--max-eval-examples", "40",
             "--max-length", "32", "--epochs", "1", "--batch-size", "8", "--name", "ddp", "--output", "runs",
             "--set", "doctor.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(launch + train, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    run_dir = tmp_path / "runs" / "ddp"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # 64 examples in batches of 8 shared by 2 processes: 4 optimizer steps (one process alone would take 8)
    assert metrics["steps"] == 4
    assert metrics["train_examples"] == 64
    # evaluation gathered from both processes, every example exactly once
    assert sum(map(sum, metrics["eval"]["confusion_matrix"])) == 40
    assert 0 <= metrics["eval"]["accuracy"] <= 1
    with safe_open(str(run_dir / "model" / "model.safetensors"), "pt") as f:
        assert any(name.startswith("head.") for name in f.keys())
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.html").is_file()
    assert proc.stdout.count("held-out metrics") == 1  # only the main process reports
