"""The tfidf and static-embeddings baselines: fitted with scikit-learn, saved as safetensors, predicted through the
ordinary Predictor with the very probabilities scikit-learn gave, and shown in compare beside the plans."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from sklearn.feature_extraction.text import TfidfVectorizer

from transferlab.backbones import open_backbone
from transferlab.config import build_config
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.lab.compare import run_compare
from transferlab.pipeline import load_run_data, train_run
from transferlab.tasks import task_class
from transferlab.training import baselines

DATA = {"max_train_examples": 120, "max_eval_examples": 40}


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    docs = {}
    for kind in baselines.BASELINES:
        cfg = build_config(tiny_config(root, name=kind, data=DATA, strategy={"name": kind}))
        docs[kind] = (cfg, train_run(cfg, show_progress=False))
    return docs


@pytest.mark.parametrize("kind", baselines.BASELINES)
def test_a_baseline_is_an_ordinary_run_that_predicts_and_evaluates(baseline_runs, kind):
    cfg, doc = baseline_runs[kind]
    run = cfg.run_dir
    assert {"config.yaml", "metrics.json", "report.html", "model"} <= {p.name for p in run.iterdir()}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["strategy"] == kind and saved["train_examples"] == 120 and saved["eval_examples"] == 40
    assert 0.5 <= saved["eval"]["accuracy"] <= 1 and saved["plan"][0]["trainable_params"] > 0
    assert not list((run / "model").glob("*.bin")) and not list((run / "model").glob("*.pkl"))  # no pickle
    predictor = Predictor(run)
    data = load_run_data(cfg)
    # the saved model scores the held-out examples exactly as the run measured them
    assert predictor.evaluate(data.eval)["accuracy"] == pytest.approx(doc["eval"]["accuracy"])
    texts = ["A wonderful, moving film.", "Dull, boring and far too long."]
    predictions = predictor.predict(texts)
    assert len(predictions) == 2 and all(0.5 <= p["score"] <= 1 for p in predictions)
    # an ordinary transformers model too, once `import transferlab` has registered the class (as the card says)
    from transformers import pipeline

    theirs = pipeline("text-classification", model=str(run / "model"))(texts)
    assert [t["label"] for t in theirs] == [p["label"] for p in predictions]
    assert [t["score"] for t in theirs] == pytest.approx([p["score"] for p in predictions], abs=1e-5)
    assert "import transferlab" in (run / "model" / "README.md").read_text()


def test_the_saved_tfidf_model_gives_scikit_learns_probabilities(baseline_runs):
    cfg, _ = baseline_runs["tfidf"]
    data = load_run_data(cfg)
    backbone = open_backbone(cfg.model.name, cfg.model.max_length)
    task = task_class("classification").for_data(cfg, data, backbone.processor)
    train, held_out = task.encoded(data.train), task.encoded(data.eval)
    vocab_size = len(backbone.processor.tokenizer)
    vectorizer = TfidfVectorizer(analyzer=baselines._terms(vocab_size), sublinear_tf=True,
                                 max_features=baselines.MAX_TERMS)
    features = vectorizer.fit_transform(baselines._piece_ids(train))
    targets = np.array([f["labels"] for f in train.features])
    reference = baselines.make_classifier(targets, cfg.seed).fit(features, targets)
    expected = reference.predict_proba(vectorizer.transform(baselines._piece_ids(held_out)))
    got = Predictor(cfg.run_dir).outputs(data.eval)
    assert np.abs(torch.softmax(torch.from_numpy(got["logits"]), -1).numpy() - expected).max() < 1e-4


def test_baselines_refuse_other_tasks(tmp_path):
    class Tokens:
        name, modality = "tokens", "text"

    with pytest.raises(UserError, match="text classification"):
        baselines.check_baseline("tfidf", Tokens())


def test_baselines_are_rows_of_compare_beside_the_plans(tmp_path):
    cfg = build_config(tiny_config(tmp_path, name="cmp", data={"max_train_examples": 60, "max_eval_examples": 20},
                                   model={"max_length": 32}, training={"epochs": 1, "batch_size": 8}))
    result = run_compare(cfg, ["tfidf", "static-embeddings", "feature-extraction"])
    rows = {r["strategy"]: r for r in result.rows}
    assert set(rows) == {"tfidf", "static-embeddings", "feature-extraction"}
    assert rows["tfidf"]["trainable_pct"] == 100.0  # every weight of a TF-IDF model is fitted
    assert 0 < rows["static-embeddings"]["trainable_pct"] < 1  # the embedding matrix stays as it was
    assert all(0 <= r["accuracy"] <= 1 for r in rows.values())
    csv = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert {"tfidf", "static-embeddings"} <= set(csv["strategy"])
