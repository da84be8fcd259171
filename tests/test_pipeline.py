"""A saved model directory is a Hugging Face model: transformers.pipeline gives transferlab's predictions."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification, pipeline

from transferlab.deploy.predictor import Predictor

TEXTS = [
    "Best movie ever!",
    "A tedious, overlong mess with nothing to say.",
    "The performances are wonderful and the script is sharp and funny.",
    "I wanted to walk out after twenty minutes.",
    "It is a film.",
]


@pytest.fixture(scope="module")
def classifier(tiny_run):
    return pipeline("text-classification", model=str(tiny_run / "model"), trust_remote_code=True)


def test_model_dir_carries_its_code_and_label_names(tiny_run):
    model_dir = tiny_run / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert (model_dir / "modeling_transferlab.py").is_file()
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_transferlab.")
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=True)
    assert model.config.num_labels == 2


def test_pipeline_gives_predictor_labels_and_scores(tiny_run, classifier):
    ours = Predictor(tiny_run).predict(TEXTS)
    theirs = classifier(TEXTS)
    assert [p["label"] for p in theirs] == [p["label"] for p in ours]
    assert {p["label"] for p in theirs} <= {"negative", "positive"}  # names, never LABEL_0
    for hf, tl in zip(theirs, ours, strict=True):
        assert hf["score"] == pytest.approx(tl["score"], abs=1e-4)


def test_pipeline_gives_every_class_probability(tiny_run, classifier):
    ours = Predictor(tiny_run).predict(TEXTS)
    theirs = classifier(TEXTS, top_k=None)
    for hf, tl in zip(theirs, ours, strict=True):
        assert {p["label"]: p["score"] for p in hf} == pytest.approx(tl["probabilities"], abs=1e-4)
