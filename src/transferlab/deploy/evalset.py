"""A run's evaluation examples, rebuilt from its config.yaml, and a Predictor's accuracy on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.config import RunConfig, build_config, load_yaml
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError


@dataclass
class EvalSet:
    """Texts (and optional text pairs) with their gold label names."""

    texts: list[str]
    text_pairs: list[str] | None
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def run_config(run_dir: Path) -> RunConfig:
    """The validated config a run was trained with."""
    path = run_dir / "config.yaml"
    return build_config(load_yaml(path), str(path))


def load_eval_set(run_dir: Path, limit: int | None = None) -> EvalSet:
    """The run's eval split exactly as training saw it (same data, split and seed)."""
    from transferlab.pipeline import load_run_data

    cfg = run_config(run_dir)
    if cfg.task != "classification":
        raise UserError(f"Accuracy of deployed models is measured for classification runs; '{run_dir}' is "
                        f"a {cfg.task} run.", "Use `transferlab evaluate` for this task.")
    frame = load_run_data(cfg).eval
    if limit:
        frame = frame.iloc[:limit]
    pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame else None
    return EvalSet(frame["text"].astype(str).tolist(), pairs, frame["label"].astype(str).tolist())


def accuracy(predictor: Predictor, evalset: EvalSet) -> float:
    """Share of eval examples whose arg-max label is the gold label."""
    logits = predictor.outputs(evalset.texts, evalset.text_pairs)["logits"]
    predicted = np.asarray(predictor.labels)[logits.argmax(axis=-1)]
    return float(np.mean(predicted == np.asarray(evalset.labels)))
