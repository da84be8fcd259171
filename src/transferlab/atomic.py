"""Atomic writes: a file or directory appears complete under its name, or not at all (a kill or a full disk
mid-write leaves the previous version, never half of a new one)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
        raise


def replace_dir(new: Path, final: Path, aside: Path | None = None) -> None:
    """Put the complete directory `new` in the place of `final`: rename the old one to `aside`, rename the new one
    in, then delete the old one."""
    aside = aside or final.with_name(f".{final.name}.old")
    if final.exists():
        os.rename(final, aside)
    os.rename(new, final)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside `final` to write into; it replaces `final` when the body has finished, and is
    removed if the body fails."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
