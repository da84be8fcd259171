"""Atomic, resumable checkpoints: write into a temp directory, then rename; a pointer file names the latest.

A checkpoint holds the model's weights (safetensors), the trainer's state and history, the best weights so far,
and — through accelerate's checkpointing — the optimizer and scheduler of the running phase and the random states of
every process (Python, NumPy, torch CPU and CUDA), so a resumed run replays the same batches, dropout masks and
updates as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.checkpointing import load_accelerator_state, save_accelerator_state
from safetensors.torch import load_file, load_model, save_file, save_model

from transferlab.errors import UserError

LATEST = "latest"


def save_checkpoint(accelerator: Accelerator, ckpt_root: Path, step: int, model: torch.nn.Module, optimizer,
                    scheduler, state: dict, history: list[dict], best_state: dict[str, torch.Tensor] | None) -> Path:
    """Write a complete checkpoint atomically and drop older ones; every process calls this (each saves its RNG)."""
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-{final.name}"
    main = accelerator.is_main_process
    if main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    try:
        save_accelerator_state(str(tmp), [], [optimizer], [scheduler], [], accelerator.process_index, step)
        if main:
            save_model(model, str(tmp / "model.safetensors"))
            if best_state is not None:
                save_file(best_state, str(tmp / "best.safetensors"))
            (tmp / "state.json").write_text(json.dumps(state))
            (tmp / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the last complete checkpoint stays; a full disk gets space back
        raise
    accelerator.wait_for_everyone()
    if main:
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        pointer_tmp = ckpt_root / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, ckpt_root / LATEST)
        for old in ckpt_root.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def latest_checkpoint(ckpt_root: Path) -> Path:
    """The directory of the last complete checkpoint, or a UserError saying there is none."""
    path = last_checkpoint(ckpt_root)
    if path is None:
        raise UserError(f"--resume: no checkpoint found in '{ckpt_root}'.",
                        "Resume needs the same --output and --name as the interrupted run; "
                        "start without --resume to train from scratch.")
    return path


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """The directory of the last complete checkpoint, or None."""
    pointer = ckpt_root / LATEST
    path = ckpt_root / pointer.read_text().strip() if pointer.is_file() else None
    return path if path is not None and path.is_dir() else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict, list[dict], dict | None]:
    """Restore model weights; return (trainer state, history, best weights)."""
    load_model(model, str(path / "model.safetensors"))
    state = json.loads((path / "state.json").read_text())
    history = [json.loads(line) for line in (path / "history.jsonl").read_text().splitlines() if line]
    best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
    return state, history, best


def restore_loop_state(accelerator: Accelerator, path: Path, optimizer=None, scheduler=None) -> None:
    """Restore the random states of this process (and the phase's optimizer and scheduler when given), as saved."""
    load_accelerator_state(str(path), [], [optimizer] if optimizer else [], [scheduler] if scheduler else [], [],
                           accelerator.process_index)
