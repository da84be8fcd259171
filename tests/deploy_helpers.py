"""Shared by the deployment tests: a private copy of the tiny run (exports write into the model directory)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from transferlab.cli import main


def copy_run(run_dir: Path, dest: Path) -> Path:
    """config.yaml + model/ of a run, copied so a test module may add files without touching the shared run."""
    dest.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", dest / "config.yaml")
    shutil.copytree(run_dir / "model", dest / "model")
    return dest


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `transferlab ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["transferlab", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
