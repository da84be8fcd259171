"""Stratified k-fold cross-validation: folds, per-fold runs, mean ± std in cv.json, bad fold counts."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from conftest import tiny_config

from transferlab.cli import main
from transferlab.config import build_config
from transferlab.errors import UserError
from transferlab.lab.cross_validation import aggregate_metrics, cross_validate, fold_data, summarize
from transferlab.tasks.base import RunData


def _data(positives: int, negatives: int) -> RunData:
    frame = pd.DataFrame({"text": [f"review {i}" for i in range(positives + negatives)],
                          "label": ["positive"] * positives + ["negative"] * negatives})
    return RunData(frame, frame.iloc[:0], ["negative", "positive"])


def test_every_example_is_held_out_exactly_once_with_the_class_mix_kept():
    folds = fold_data(_data(12, 6), k=3, seed=0)
    held_out = pd.concat([f.eval for f in folds])
    assert sorted(held_out["text"]) == sorted(_data(12, 6).train["text"])
    for fold in folds:
        assert fold.eval["label"].value_counts().to_dict() == {"positive": 4, "negative": 2}
        assert not set(fold.train["text"]) & set(fold.eval["text"])


def test_more_folds_than_examples_of_the_rarest_class_is_a_user_error():
    with pytest.raises(UserError, match="rarest class"):
        fold_data(_data(12, 3), k=4, seed=0)


def test_summary_is_mean_and_sample_std():
    assert summarize([0.8, 0.9]) == pytest.approx({"mean": 0.85, "std": 0.0707107, "n": 2})
    assert summarize([0.7])["std"] == 0.0
    both = aggregate_metrics([{"accuracy": 0.5, "f1": 0.4, "per_class": {}}, {"accuracy": 0.7, "f1": 0.6}])
    assert set(both) == {"accuracy", "f1"}
    assert both["f1"] == pytest.approx({"mean": 0.5, "std": 0.1414214, "n": 2})


def test_cross_validation_runs_one_training_per_fold_and_writes_cv_json(tmp_path):
    cfg = build_config(tiny_config(tmp_path, name="cv", data={"max_train_examples": 40, "max_eval_examples": 20},
                                   model={"max_length": 32}, strategy={"name": "feature-extraction"},
                                   training={"epochs": 1, "batch_size": 8}))
    result = cross_validate(cfg, 2, show_progress=False)
    saved = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [f["eval_examples"] for f in saved["per_fold"]] == [20, 20]
    accuracies = [f["eval"]["accuracy"] for f in saved["per_fold"]]
    assert saved["metrics"]["accuracy"] == pytest.approx(summarize(accuracies))
    for i in (1, 2):
        fold_dir = tmp_path / "cv" / f"fold-{i}"
        assert (fold_dir / "metrics.json").is_file() and (fold_dir / "model").is_dir()
        assert not (fold_dir / "checkpoints").exists()


def test_cli_folds_above_the_rarest_class_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["transferlab", "train", "--folds", "30", "--max-train-examples", "20",
                                      "--output", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "Cannot make 30 stratified folds" in capsys.readouterr().err
