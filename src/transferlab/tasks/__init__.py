"""Task registry: a run's `task` name -> its Task class."""

from __future__ import annotations

import importlib

from transferlab.errors import UserError

TASKS = {
    "classification": "transferlab.tasks.classification:ClassificationTask",
}


def task_class(name: str):
    """The Task class registered under `name`."""
    if name not in TASKS:
        raise UserError(f"Unknown task '{name}'.", f"Choose one of: {', '.join(TASKS)}.")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
