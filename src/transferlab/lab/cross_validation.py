"""Stratified k-fold cross-validation over a run's training data: one run per fold, mean ± std per metric.

Also the helpers every multi-run experiment (cv, compare, search) shares: summary statistics over runs and
the clean-up of finished runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from transferlab.config import RunConfig
from transferlab.data.splits import stratified_kfold
from transferlab.errors import UserError
from transferlab.evaluation.metrics import is_number
from transferlab.pipeline import load_run_data, results_dir, train_run
from transferlab.tasks.base import RunData


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for a single value) and count."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": len(array)}


def aggregate_metrics(evals: Sequence[dict]) -> dict[str, dict]:
    """Mean ± std of each scalar metric present in every one of the eval-metric dicts."""
    names = [k for k, v in evals[0].items() if is_number(v)] if evals else []
    return {name: summarize([e[name] for e in evals]) for name in names
            if all(is_number(e.get(name)) for e in evals)}


def drop_checkpoints(run_dir: Path, keep_model: bool = True) -> None:
    """A finished run of an experiment needs no resume point (several hundred MB each); optionally no model."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if not keep_model:
        shutil.rmtree(run_dir / "model", ignore_errors=True)


def fold_data(data: RunData, k: int, seed: int) -> list[RunData]:
    """k (train, held-out) splits of the training examples, each keeping the class proportions."""
    if data.labels is None or "label" not in data.train:
        raise UserError("--folds needs class labels to stratify the folds on, and this task's data has none.",
                        "Drop --folds, or use a classification dataset.")
    return [RunData(train, held_out, data.labels) for train, held_out in stratified_kfold(data.train, k, seed)]


def cross_validate(cfg: RunConfig, k: int, overwrite: bool = False, show_progress: bool = True,
                   on_fold: Callable[[int, dict], None] | None = None) -> dict:
    """Train one run per fold under cfg.run_dir/fold-<i>; write and return cv.json (mean ± std per metric).

    The folds split the training examples the config selects (after --max-train-examples); each fold's held-out
    part is its evaluation set, so the config's own eval split is not used.
    """
    folds = fold_data(load_run_data(cfg), k, cfg.seed)
    with results_dir(cfg, overwrite) as root:
        docs = []
        for i, data in enumerate(folds, start=1):
            fold_cfg = cfg.model_copy(update={"output_dir": str(root), "name": f"fold-{i}"})
            doc = train_run(fold_cfg, show_progress=show_progress, data=data)
            drop_checkpoints(fold_cfg.run_dir)
            docs.append(doc)
            if on_fold is not None:
                on_fold(i, doc)
        result = {
            "folds": k, "examples": sum(len(d.eval) for d in folds), "seed": cfg.seed, "strategy": cfg.strategy.name,
            "metrics": aggregate_metrics([d["eval"] for d in docs]),
            "per_fold": [{"fold": i, "run_dir": str(root / f"fold-{i}"), "train_examples": d["train_examples"],
                          "eval_examples": d["eval_examples"], "train_time_s": d["train_time_s"],
                          "eval": {m: v for m, v in d["eval"].items() if is_number(v)},
                          "warnings": [w["code"] for w in d.get("warnings", [])]}
                         for i, d in enumerate(docs, start=1)],
        }
        (root / "cv.json").write_text(json.dumps(result, indent=2))
        return result
