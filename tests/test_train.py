"""Real training through the CLI: every artefact of a run, accuracy above chance; early stopping."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from conftest import tiny_config

from transferlab.cli import main
from transferlab.commands.run import resolve_config
from transferlab.config import build_config
from transferlab.pipeline import train_run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """`transferlab train` on 400 bundled reviews, 2 epochs: (run directory, stdout)."""
    root = tmp_path_factory.mktemp("e2e")
    args = ["train", "--max-train-examples", "400", "--max-eval-examples", "200", "--max-length", "64",
            "--epochs", "2", "--batch-size", "16", "--lr", "3e-4", "--eval-every", "20", "--seed", "7",
            "--strategy", "freeze-attention", "--name", "e2e", "--output", str(root),
            "--set", "training.log_every=5", "--set", "doctor.train_eval_examples=0"]
    capture = pytest.MonkeyPatch()
    capture.setattr(sys, "argv", ["transferlab", *args])
    capture.setattr(logging.getLogger("transferlab"), "handlers", [])  # main() adds one on this stderr
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (0, None)
    finally:
        capture.undo()
    return root / "e2e"


def test_run_directory_has_every_artefact(e2e):
    for path in ("config.yaml", "model/config.json", "model/model.safetensors", "model/tokenizer.json",
                 "model/modeling_transferlab.py", "metrics.json", "history.jsonl", "report.html"):
        assert (e2e / path).is_file(), path
    for plot in ("learning_curves", "confusion_matrix"):
        data = (e2e / "plots" / f"{plot}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, plot
    report = (e2e / "report.html").read_text()
    assert "accuracy" in report and "freeze-attention" in report


def test_config_yaml_reruns_the_same_run(e2e):
    cfg = resolve_config(e2e / "config.yaml", {}, [])
    assert cfg.run_dir == e2e
    assert (cfg.data.max_train_examples, cfg.training.epochs, cfg.strategy.lr, cfg.seed) == (400, 2, 3e-4, 7)
    assert cfg.training.log_every == 5  # --set overrides are kept too


def test_metrics_json(e2e):
    metrics = json.loads((e2e / "metrics.json").read_text())
    assert (metrics["train_examples"], metrics["eval_examples"], metrics["steps"]) == (400, 200, 50)
    assert metrics["labels"] == ["negative", "positive"]
    (phase,) = metrics["plan"]
    assert list(phase["groups"]) == [f"layer.{i}.ffn" for i in range(6)] + ["head"]
    assert 0.30 < phase["trainable_ratio"] < 0.33 and phase["trainable_params"] > 7_000_000
    ev = metrics["eval"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0 <= ev[key] <= 1, key
    matrix = ev["confusion_matrix"]
    assert len(matrix) == 2 and sum(map(sum, matrix)) == 200
    assert ev["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 200)
    assert set(ev["per_class"]) == {"negative", "positive"}
    majority = max(map(sum, matrix)) / 200
    # measured: 0.755 (the best evaluation, step 20, restored) against a majority share of 0.58
    assert ev["accuracy"] > majority + 0.08, (ev["accuracy"], majority)
    assert ev["roc_auc"] > 0.75
    assert metrics["train_samples_per_s"] > 0 and metrics["seed"] == 7


def test_history_has_train_and_eval_records(e2e):
    records = [json.loads(line) for line in (e2e / "history.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(5, 51, 5))
    assert [r["step"] for r in evals] == [20, 25, 40, 50]  # every 20 steps and at each epoch's end
    assert all(r["loss"] > 0 and "accuracy" in r["metrics"] for r in evals)
    assert train[-1]["loss"] < train[0]["loss"]


def test_best_evaluation_is_restored(e2e):
    metrics = json.loads((e2e / "metrics.json").read_text())
    evals = [r for r in map(json.loads, (e2e / "history.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    best = max(evals, key=lambda r: r["metrics"]["accuracy"])  # the first of equals, as the trainer keeps it
    assert metrics["best_step"] == best["step"] and not metrics["stopped_early"]
    assert metrics["eval"]["accuracy"] == pytest.approx(best["metrics"]["accuracy"])


def test_early_stopping_stops_and_restores_the_best(tmp_path):
    cfg = build_config(tiny_config(tmp_path, data={"max_train_examples": 32, "max_eval_examples": 16},
                                   model={"max_length": 32}, doctor={"enabled": False},
                                   training={"epochs": 3, "batch_size": 8, "eval_every": 1,
                                             "early_stopping_patience": 2}))
    doc = train_run(cfg, show_progress=False)
    evals = [r for r in map(json.loads, (cfg.run_dir / "history.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert doc["stopped_early"] and doc["steps"] < 12
    best = max(evals, key=lambda r: r["metrics"]["accuracy"])
    assert doc["best_step"] == best["step"]
    assert [r["step"] for r in evals if r["step"] > best["step"]] == [best["step"] + 1, best["step"] + 2]
    assert doc["eval"]["accuracy"] == pytest.approx(best["metrics"]["accuracy"])
