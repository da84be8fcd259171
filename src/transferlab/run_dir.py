"""Run directories: plain names that stay inside --output, an exclusive lock for the whole run, a free-space check
before any work, and an old run replaced only once the new one has finished.

```
<output>/<name>/           the run
<output>/.<name>.lock      held while a process writes the run (PID, host, start time, command)
<output>/<name>.staging/   an --overwrite trains here; renamed to <name> when it has finished
<output>/<name>.previous/  the replaced run, for the instant of the swap (or, for compare / search /
                           cross-validation, until the new results are complete)
```
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from transferlab.atomic import replace_dir
from transferlab.errors import UserError

NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
STAGING, PREVIOUS = ".staging", ".previous"
CHECKPOINT_COPIES = 2  # a new checkpoint is complete on disk before the one it replaces is removed
MARGIN_BYTES = 50 * 2**20  # history, plots, report, config


def check_run_name(name: str) -> None:
    """Refuse a run name that is not a plain relative name (letters, digits, -, _, . and sub-folders)."""
    parts = name.split("/")
    if name and all(NAME_PART.fullmatch(part) for part in parts):
        return
    raise UserError(f"Run name {name!r} (--name, or `name:` in the config) is not a plain name: a run lives in a "
                    "folder under --output, and this name could point outside it, at --output itself, or at a "
                    "hidden file.",
                    "Use letters, digits, '-', '_' and '.' (not first), with '/' between sub-folders, e.g. "
                    "--name sentiment-v2 or --name exp/lr-3e-4; choose the parent folder with --output.")


def sibling(run_dir: Path, suffix: str) -> Path:
    """`<output>/<name><suffix>`: the staging or previous directory of a run."""
    return run_dir.with_name(run_dir.name + suffix)


def lock_path(run_dir: Path) -> Path:
    """`<output>/.<name>.lock`, beside the run so that it outlives the run's replacement."""
    return run_dir.with_name(f".{run_dir.name}.lock")


def holds_run(path: Path) -> bool:
    """Whether `path` is a directory with anything in it."""
    return path.is_dir() and any(path.iterdir())


# ---- the lock ------------------------------------------------------------------------------------------

def _holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs (not a later process reusing its PID)."""
    try:
        process = psutil.Process(int(holder["pid"]))
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= holder["started"] + 1
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {started}, "
            f"command: {holder.get('command', '?')})")


@contextlib.contextmanager
def run_lock(run_dir: Path, take_over_dead: bool = False) -> Iterator[None]:
    """Hold `<output>/.<name>.lock` while the body runs; refuse when another process holds it.

    A lock left by a dead process of this host is an error that says how to clear it, unless `take_over_dead`
    (an explicit --resume of that killed run), when it is taken over with a warning."""
    path = lock_path(run_dir)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
          "command": shlex.join(["transferlab", *sys.argv[1:]])}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        holder = _read_holder(path)
        dead = holder.get("host") == me["host"] and not _holder_alive(holder)
        if not (dead and take_over_dead):
            raise _locked_error(run_dir, path, holder, dead) from None
        import logging

        logging.getLogger("transferlab").warning("taking over the lock of %s, left by %s, which is no longer "
                                                 "running", run_dir, _describe(holder))
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(me))
    try:
        yield
    finally:
        if _read_holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        # folders made only to hold the lock go again when the run left nothing in them (bad input stops early)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break


def _locked_error(run_dir: Path, path: Path, holder: dict, dead: bool) -> UserError:
    if dead:
        return UserError(f"Run directory '{run_dir}' has a stale lock: {path} was left by {_describe(holder)}, "
                         "which is no longer running (it was killed or crashed).",
                         f"To continue that run from its last checkpoint, pass --resume (it takes the lock over); "
                         f"otherwise check that no transferlab process uses '{run_dir}', delete {path} and run "
                         "the command again.")
    return UserError(f"Run directory '{run_dir}' is in use by {_describe(holder)}, which holds {path}.",
                     "Wait for that run to finish, or choose another --name. If that process is gone (another "
                     f"machine that crashed), delete {path}.")


# ---- free space ----------------------------------------------------------------------------------------

def needed_bytes(model_bytes: int, trainable_bytes: int, resumed: bool = False) -> int:
    """Disk a training run still needs: the saved model and, at the moment one replaces another, two checkpoints
    (weights, best weights, AdamW's two moments of the trainable weights); a resumed run has one of them already."""
    checkpoint = 2 * model_bytes + 2 * trainable_bytes
    return model_bytes + (CHECKPOINT_COPIES - resumed) * checkpoint + MARGIN_BYTES


def check_free_space(run_dir: Path, needed: int, what: str) -> None:
    """Refuse to start a run whose artefacts would not fit on the disk of `run_dir`."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise UserError(f"Not enough disk space for {what} in '{run_dir}': about {_size(needed)} is needed "
                        f"(the model, its checkpoints and reports), {_size(free)} is free on that disk.",
                        "Free some space, or point --output at a disk with more room.")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def is_disk_full(err: BaseException) -> bool:
    """Whether an exception is the disk (or the user's quota) running out of space."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(run_dir: Path, kept: Path | None, resume_name: str, output: Path,
                    replaced: Path | None = None) -> UserError:
    """The one paragraph for a disk that filled mid-run: what is kept and how to go on."""
    what = f"The disk filled up while writing '{run_dir}'"
    if replaced is not None:
        return UserError(f"{what}, the new run that --overwrite was to put in the place of '{replaced}'. That run "
                         "is untouched.", "Free some space (or choose another --output) and run the same command "
                         f"again; '{replaced}' is replaced only once the new run has finished.")
    if kept is None:
        return UserError(f"{what} before its first checkpoint: no training progress was kept.",
                         "Free some space (or choose another --output) and run the same command again.")
    return UserError(f"{what}. The last complete checkpoint is kept: {kept}.",
                     f"Free some space, then continue from it with `transferlab train --resume --name "
                     f"{resume_name} --output {output}`.")


# ---- replacing a run -----------------------------------------------------------------------------------

def check_no_interrupted_swap(run_dir: Path) -> None:
    """Refuse to go on while `<name>.previous` (a run an interrupted replacement set aside) exists."""
    previous = sibling(run_dir, PREVIOUS)
    if previous.exists():
        raise UserError(f"'{previous}' holds the run that an interrupted --overwrite of '{run_dir}' was replacing; "
                        "transferlab never deletes it on its own.",
                        f"Keep the run you want: delete '{previous}' (the new run is '{run_dir}'), or delete "
                        f"'{run_dir}' and rename '{previous}' back to it; then run the command again.")


def refuse_existing(run_dir: Path, overwrite: bool) -> bool:
    """True when `run_dir` holds a run that --overwrite will replace; a UserError when it holds one and
    --overwrite was not given."""
    check_no_interrupted_swap(run_dir)
    if not holds_run(run_dir):
        return False
    if not overwrite:
        raise UserError(f"Run directory '{run_dir}' already holds a run.",
                        "Pass --resume to continue it, --overwrite to replace it, or choose another --name.")
    return True


def fresh_staging(run_dir: Path) -> Path:
    """An empty `<name>.staging` (what an earlier, interrupted --overwrite left there is ours to remove)."""
    staging = sibling(run_dir, STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, run_dir: Path) -> None:
    """Replace `run_dir` by the finished `staging`: rename the old one aside, rename the new one in, delete the
    old one (a kill in between leaves both, and the next run says so)."""
    replace_dir(staging, run_dir, aside=sibling(run_dir, PREVIOUS))


@contextlib.contextmanager
def set_aside(run_dir: Path, replace: bool) -> Iterator[None]:
    """For results written straight into `run_dir` (compare, search, cross-validation): move an old run to
    `<name>.previous` while the body runs; put it back if the body fails, delete it once the body has finished."""
    if not replace:
        yield
        return
    previous = sibling(run_dir, PREVIOUS)
    os.rename(run_dir, previous)
    try:
        yield
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        os.rename(previous, run_dir)
        raise
    shutil.rmtree(previous, ignore_errors=True)

