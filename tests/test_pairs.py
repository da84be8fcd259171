"""Sentence pairs: STS-style regression and NLI-style classification, trained, evaluated, saved and used through
the CLI on the silver movie-review pairs of examples/, and the bad inputs of a pairs file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from transferlab.config import build_config, load_yaml
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.pipeline import train_run
from transferlab.tasks.pairs import PairsConfig, read_scored_pairs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--max-train-examples", "24", "--max-eval-examples", "12", "--epochs", "1", "--batch-size", "8",
        "--max-length", "48", "--set", "training.eval_every=null", "--set", "doctor.enabled=false",
        "--set", "training.precision=fp32"]


@pytest.fixture(scope="module")
def sts_run(tmp_path_factory, transferlab_cli) -> Path:
    """examples/sts.yaml (full fine-tuning, MSE on a 0-5 score) for 3 steps on 24 pairs."""
    out = tmp_path_factory.mktemp("runs")
    code = transferlab_cli("train", "--config", ROOT / "examples" / "sts.yaml", "--output", out, "--name", "sts",
                           *TINY)
    assert code == 0
    return out / "sts"


def test_sts_run_reports_correlations_and_saves_a_regressor(sts_run):
    doc = json.loads((sts_run / "metrics.json").read_text())
    assert doc["task"] == "pairs" and doc["strategy"] == "full" and doc["steps"] == 3
    assert doc["eval_examples"] == 12
    for metric in ("pearson", "spearman", "mse"):
        assert isinstance(doc["eval"][metric], float), doc["eval"]
    assert doc["eval"]["rmse"] == pytest.approx(doc["eval"]["mse"] ** 0.5)
    config = json.loads((sts_run / "model" / "config.json").read_text())
    assert config["task"] == "pairs" and config["id2label"] == {"0": "score"} and config["problem_type"] == "regression"


def test_sts_predict_and_evaluate_through_the_cli(sts_run, transferlab_cli, capsys, tmp_path):
    pairs = ["The film is a delight.", "A delightful movie.", "The film is a delight.", "I hated every minute."]
    expected = [p["score"] for p in Predictor(sts_run).predict([{"text": a, "text_pair": b}
                                                                for a, b in zip(pairs[::2], pairs[1::2], strict=True)])]
    assert transferlab_cli("predict", sts_run, *pairs) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    for line, score, (a, b) in zip(lines, expected, [pairs[:2], pairs[2:]], strict=True):
        assert line.split()[0] == f"{score:.4f}" and a in line and b in line, line
    assert transferlab_cli("predict", sts_run, *pairs, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows == [{"score": pytest.approx(s, abs=1e-5), "text_a": a, "text_b": b}
                    for s, a, b in zip(expected, pairs[::2], pairs[1::2], strict=True)]
    # evaluate re-reads the eval file as the run did: the same 12 pairs score as in metrics.json
    eval_file = tmp_path / "eval.csv"
    doc = json.loads((sts_run / "metrics.json").read_text())
    cfg = build_config(load_yaml(sts_run / "config.yaml"))
    from transferlab.pipeline import load_run_data

    load_run_data(cfg).eval.rename(columns={"text": "text_a", "text_pair": "text_b", "label": "score"}).to_csv(
        eval_file, index=False)
    assert transferlab_cli("evaluate", sts_run, "--data", eval_file, "--output", tmp_path / "m.json") == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["spearman"] == pytest.approx(doc["eval"]["spearman"], abs=1e-3)
    assert again["mse"] == pytest.approx(doc["eval"]["mse"], rel=1e-3)


def test_pair_classification_with_a_freezing_strategy(tmp_path):
    cfg = build_config({
        **load_yaml(ROOT / "examples" / "pair-classification.yaml"), "output_dir": str(tmp_path),
        "strategy": {"name": "freeze-attention", "lr": 3e-4},
        "data": {"train": str(ROOT / "examples/data/movie_pairs_train.csv"),
                 "eval": str(ROOT / "examples/data/movie_pairs_eval.csv"),
                 "max_train_examples": 24, "max_eval_examples": 12},
        "model": {"max_length": 48},
        "training": {"epochs": 1, "batch_size": 12, "precision": "fp32"}, "doctor": {"enabled": False},
    })
    doc = train_run(cfg, show_progress=False)
    assert doc["labels"] == ["agree", "disagree", "paraphrase"]
    assert 0 <= doc["eval"]["accuracy"] <= 1 and len(doc["eval"]["confusion_matrix"]) == 3
    learns = doc["plan"][0]["groups"]
    assert "head" in learns and not any(g.endswith(".attention") for g in learns)
    assert doc["plan"][0]["trainable_ratio"] < 0.5
    rows = Predictor(cfg.run_dir).predict([{"text": "A wonderful film.", "text_pair": "A marvellous film."}])
    assert rows[0]["label"] in doc["labels"] and sum(rows[0]["probabilities"].values()) == pytest.approx(1)


def write_pairs(path: Path, rows: list[tuple]) -> str:
    pd.DataFrame(rows, columns=["text_a", "text_b", "score"]).to_csv(path, index=False)
    return str(path)


def test_a_score_outside_its_declared_range_names_the_row(tmp_path):
    path = write_pairs(tmp_path / "p.csv", [("a", "b", 1.0), ("c", "d", 4.5), ("e", "f", 7.0)])
    with pytest.raises(UserError, match=r"data row 3 has a score outside the declared range \[0, 5\].*7"):
        read_scored_pairs(path, PairsConfig())
    assert read_scored_pairs(path, PairsConfig(max_score=10))["label"].tolist() == [1.0, 4.5, 7.0]


def test_other_bad_pairs_files(tmp_path):
    with pytest.raises(UserError, match=r"data row 2 has a score that is not a number.*'high'"):
        read_scored_pairs(write_pairs(tmp_path / "a.csv", [("a", "b", 1), ("c", "d", "high")]), PairsConfig())
    with pytest.raises(UserError, match=r"data row 1 has an empty text_pair \(column 'text_b'"):
        read_scored_pairs(write_pairs(tmp_path / "b.csv", [("a", " ", 1), ("c", "d", 2)]), PairsConfig())
    with pytest.raises(UserError, match=r"no text_pair column 'second'.*--set pairs.text_b_column=COLUMN"):
        read_scored_pairs(write_pairs(tmp_path / "c.csv", [("a", "b", 1)]), PairsConfig(text_b_column="second"))


def test_out_of_range_score_exits_2_from_the_cli(transferlab_cli, capsys, tmp_path):
    path = write_pairs(tmp_path / "p.csv", [("a", "b", 1.0), ("c", "d", -1.0)] * 3)
    code = transferlab_cli("train", "--config", ROOT / "examples" / "sts.yaml", "--data", path,
                           "--output", tmp_path, "--set", "data.eval=null")
    err = capsys.readouterr().err
    assert code == 2 and "data row 2" in err and "outside the declared range" in err and "Traceback" not in err
