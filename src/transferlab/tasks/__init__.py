"""Task registry: a run's `task` name -> its Task class."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from transferlab.errors import UserError

TASKS = {
    "classification": "transferlab.tasks.classification:ClassificationTask",
    "tokens": "transferlab.tasks.tokens:TokensTask",
    "qa": "transferlab.tasks.qa:QaTask",
    "pairs": "transferlab.tasks.pairs:PairsTask",
    "text2text": "transferlab.tasks.text2text:Text2TextTask",
}


def task_class(name: str):
    """The Task class registered under `name`."""
    if name not in TASKS:
        raise UserError(f"Unknown task '{name}'.", f"Choose one of: {', '.join(TASKS)}.")
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def saved_task(model_dir: Path) -> str:
    """The task a saved transferlab model was trained for (from its config.json)."""
    return json.loads((Path(model_dir) / "config.json").read_text()).get("task", "classification")


def require_saved_task(model_dir: Path, task: str, purpose: str) -> None:
    """Refuse a saved model of another task (e.g. asking a NER model a question)."""
    found = saved_task(model_dir)
    if found != task:
        raise UserError(f"{purpose} needs a '{task}' model, but {model_dir} holds a '{found}' model.",
                        f"Train a model with task: {task}, or use the options of a '{found}' model.")
