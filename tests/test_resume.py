"""A run killed with SIGKILL and resumed with --resume ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import get_scheduler

from transferlab.cli import main
from transferlab.errors import UserError
from transferlab.training.checkpoint import latest_checkpoint, load_checkpoint, restore_loop_state, save_checkpoint

TRANSFERLAB = Path(sys.executable).parent / "transferlab"
KILL_AFTER_STEP = 4  # of 2 epochs x 8 steps: mid first epoch


def resume_config(root: Path, name: str) -> dict:
    return {
        "name": name, "output_dir": str(root), "seed": 11,
        "data": {"max_train_examples": 64, "max_eval_examples": 32},
        "model": {"max_length": 32},
        "strategy": {"name": "freeze-attention", "lr": 3e-4},
        # log_every 3 against save_every 2: checkpoints fall between train records, with losses not yet logged
        "training": {"epochs": 2, "batch_size": 8, "save_every": 2, "eval_every": 5, "log_every": 3},
        "doctor": {"enabled": False},
    }


def run_cli(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["transferlab", *args])
    monkeypatch.setattr(logging.getLogger("transferlab"), "handlers", [])  # main() adds one per call
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"transferlab {' '.join(args)} exited with {exit_.code}"


def write_config(root: Path, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(resume_config(root, name)))
    return path


def kill_after_checkpoint(config: Path, run_dir: Path, log: Path) -> int:
    """Start `transferlab train`, SIGKILL it once a checkpoint past KILL_AFTER_STEP exists; return that step."""
    with log.open("w") as out:
        # the child computes with this process's thread count, or its sums would differ in the last bits
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        proc = subprocess.Popen([str(TRANSFERLAB), "train", "--config", str(config)], stdout=out, stderr=out,
                                cwd=config.parent, env=env)
    pointer = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before it could be killed:\n" \
                                        f"{log.read_text()[-3000:]}"
            step = int(pointer.read_text().split("-")[1]) if pointer.is_file() else 0
            if step >= KILL_AFTER_STEP:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return step
            time.sleep(0.02)
        pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(monkeypatch, "train", "--config", str(write_config(tmp_path, "straight")))
    straight = tmp_path / "straight"

    killed = tmp_path / "killed"
    step = kill_after_checkpoint(write_config(tmp_path, "killed"), killed, tmp_path / "killed.log")
    assert not (killed / "metrics.json").exists()
    assert step < 16
    # debris of an interrupted write must not confuse --resume
    (killed / "checkpoints" / ".tmp-step-00000099").mkdir(exist_ok=True)
    (killed / "checkpoints" / ".tmp-step-00000099" / "model.safetensors").write_bytes(b"half a file")
    run_cli(monkeypatch, "train", "--resume", "--name", "killed", "--output", str(tmp_path))

    a, b = load_file(str(straight / "model" / "model.safetensors")), load_file(str(killed / "model" /
                                                                                      "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    assert mb["steps"] == ma["steps"] == 16
    assert mb["best_step"] == ma["best_step"]
    assert mb["eval_loss"] == pytest.approx(ma["eval_loss"], abs=1e-6)
    assert json.dumps(mb["eval"], sort_keys=True) == json.dumps(ma["eval"], sort_keys=True)
    evals = [[(r["step"], r["metrics"]) for r in map(json.loads, (d / "history.jsonl").read_text().splitlines())
              if r["kind"] == "eval"] for d in (straight, killed)]
    assert evals[0] == evals[1]
    # the whole history, training-loss records included, is the uninterrupted run's
    records = [[r for r in map(json.loads, (d / "history.jsonl").read_text().splitlines()) if r["kind"] != "cache"]
               for d in (straight, killed)]
    assert records[0] == records[1]


# --- the checkpoint files themselves ------------------------------------------------------------------

def _training_objects():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=10)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_checkpoint_is_atomic_and_latest_wins(tmp_path):
    model, optimizer, scheduler = _training_objects()
    root = tmp_path / "checkpoints"
    accelerator = Accelerator()
    save_checkpoint(accelerator, root, 1, model, optimizer, scheduler, {"global_step": 1}, [{"step": 1}], None)
    with torch.no_grad():
        model.weight.add_(1.0)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    save_checkpoint(accelerator, root, 2, model, optimizer, scheduler, {"global_step": 2}, [{"step": 1}, {"step": 2}],
                    best)
    # a write killed half way: a temp directory and a temp pointer, never renamed into place
    (root / ".tmp-step-00000003").mkdir()
    (root / ".tmp-step-00000003" / "state.json").write_text("{")
    (root / ".latest.tmp").write_text("step-00000003")

    path = latest_checkpoint(root)
    assert path.name == "step-00000002"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002"]  # older ones dropped
    fresh = torch.nn.Linear(4, 2)
    state, history, best_state = load_checkpoint(path, fresh)
    assert state == {"global_step": 2} and history == [{"step": 1}, {"step": 2}]
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(best_state["weight"], best["weight"])
    # the optimizer, the schedule and the random state come back through accelerate's checkpointing
    optimizer2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    scheduler2 = get_scheduler("linear", optimizer2, num_warmup_steps=1, num_training_steps=10)
    torch.rand(5)  # move the random state on
    restore_loop_state(accelerator, path, optimizer2, scheduler2)
    assert scheduler2.state_dict()["last_epoch"] == 1 and optimizer2.state_dict()["state"]
    assert torch.equal(torch.get_rng_state(), rng)


def test_no_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000005")  # points at nothing
    with pytest.raises(UserError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "checkpoints")
