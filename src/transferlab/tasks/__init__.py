"""Task registry: a run's `task` name -> its Task class. Importing the registry registers every task's config
section (`ner:`, `qa:`, `pairs:`, `text2text:`, `image:`), so configs can be validated."""

from __future__ import annotations

import importlib

from transferlab.errors import UserError

TASKS: dict[str, str | type] = {
    "classification": "transferlab.tasks.classification:ClassificationTask",
    "tokens": "transferlab.tasks.tokens:TokensTask",
    "qa": "transferlab.tasks.qa:QaTask",
    "pairs": "transferlab.tasks.pairs:PairsTask",
    "text2text": "transferlab.tasks.text2text:Text2TextTask",
    "image-classification": "transferlab.tasks.images:ImageClassificationTask",
}


def task_class(name: str):
    """The Task class registered under `name`."""
    if name not in TASKS:
        raise UserError(f"Unknown task '{name}'.", f"Choose one of: {', '.join(TASKS)}.")
    target = TASKS[name]
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_task(name: str, task: type) -> None:
    """Add a task class to the registry (its module registers its config section, if it has one)."""
    TASKS[name] = task


for _target in list(TASKS.values()):
    importlib.import_module(_target.partition(":")[0])
