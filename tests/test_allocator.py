"""glibc keeps freed tensor memory for the next training step once the trainer asks it to (training/allocator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import tiny_config

from transferlab.config import build_config
from transferlab.pipeline import train_run
from transferlab.training import trainer

PROBE = """
import os, sys, torch
from transferlab.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
before = rss_mb()
x = torch.ones(6_000_000)  # 24 MB, touched
del x
print(rss_mb() - before)
"""


def _retained_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_freed_tensor_memory_stays_mapped_only_when_asked() -> None:
    # by default glibc hands a large freed block straight back (munmap); kept, the next step reuses its pages
    assert _retained_mb("default") < 8
    assert _retained_mb("keep") > 20


@pytest.mark.parametrize("keep", [True, False])
def test_the_trainer_asks_for_it_as_configured(tmp_path, monkeypatch, keep) -> None:
    calls = []
    monkeypatch.setattr(trainer, "keep_freed_memory", lambda: calls.append(1) or True)
    cfg = build_config(tiny_config(tmp_path, data={"max_train_examples": 16, "max_eval_examples": 8},
                                   model={"max_length": 16}, doctor={"enabled": False},
                                   training={"epochs": 1, "batch_size": 8, "keep_freed_memory": keep}))
    train_run(cfg, show_progress=False)
    assert len(calls) == int(keep)
