"""A run's evaluation examples, rebuilt from its config.yaml, and a Predictor's score on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from transferlab.deploy.artifacts import run_config
from transferlab.deploy.predictor import Predictor


@dataclass
class EvalSet:
    """The eval examples of a run, as its task reads them (texts and labels, questions and answers...)."""

    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)


def load_eval_set(run_dir: Path, limit: int | None = None) -> EvalSet:
    """The run's eval split exactly as training saw it (same data, split and seed)."""
    from transferlab.pipeline import load_run_data

    frame = load_run_data(run_config(run_dir)).eval
    return EvalSet(frame.iloc[:limit].reset_index(drop=True) if limit else frame)


def score(predictor: Predictor, evalset: EvalSet) -> float:
    """The model's headline metric (its task's selection metric: accuracy, F1, Spearman...) on the eval set."""
    return float(predictor.evaluate(evalset.frame)[predictor.task.metric])
