"""A saved model directory is a Hugging Face model that transformers loads with no trust_remote_code: a standard
transformers class where one computes the same (token classification, QA: no transferlab needed at all), else the
transferlab class that `import transferlab` registers with the Auto classes (classification with mean pooling, sentence
pairs). Either way transformers gives transferlab's predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from transformers import AutoModelForSequenceClassification, pipeline

from transferlab.config import build_config
from transferlab.deploy.predictor import Predictor
from transferlab.pipeline import train_run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data"
TEXTS = [
    "Best movie ever!",
    "A tedious, overlong mess with nothing to say.",
    "The performances are wonderful and the script is sharp and funny.",
    "I wanted to walk out after twenty minutes.",
    "It is a film.",
]
SENTENCES = ["Ridley Scott directed Alien in London with Sigourney Weaver .", "Steven Spielberg made Jaws in 1975 ."]
CONTEXT = "Alien is a 1979 science fiction horror film directed by Ridley Scott. It stars Sigourney Weaver."


def run_python(code: str) -> str:
    """Run `code` in a fresh interpreter with this checkout's sources; return what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def task_run(root: Path, name: str, **sections) -> Path:
    """A seconds-long run of any task on a few examples."""
    data = tiny_config(root, name=name, model={"max_length": 48}, doctor={"train_eval_examples": 0},
                       training={"epochs": 1, "batch_size": 8, "log_every": 2}, **sections)
    cfg = build_config(data)
    train_run(cfg, show_progress=False)
    return cfg.run_dir


@pytest.fixture(scope="module")
def classifier(tiny_run):
    return pipeline("text-classification", model=str(tiny_run / "model"))  # no trust_remote_code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    small = {"max_train_examples": 16, "max_eval_examples": 8}
    return {
        "tokens": task_run(root, "tokens", task="tokens", strategy={"name": "full", "lr": 1e-4},
                           data={"train": str(DATA / "silver_ner_dev.conll"), **small}),
        "qa": task_run(root, "qa", task="qa", strategy={"name": "full", "lr": 1e-4}, qa={"doc_stride": 16},
                       data={"train": str(DATA / "silver_qa_train.json"), **small}),
        "pairs": task_run(root, "pairs", task="pairs", strategy={"name": "full", "lr": 1e-4},
                          data={"train": str(DATA / "movie_pairs_train.csv"), **small}),
    }


def test_registered_class_loads_without_remote_code(tiny_run):
    """Mean pooling has no transformers counterpart: the transferlab class is saved, and `import transferlab`
    (this test process has imported it) lets the Auto classes load it with trust_remote_code unset."""
    model_dir = tiny_run / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "transferlab"
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    assert type(model).__name__ == "TransferlabForSequenceClassification" and model.config.num_labels == 2


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


def test_a_fresh_process_loads_it_after_import_transferlab(tiny_run):
    """The registration waits for transformers, whichever is imported first."""
    for imports in ("import transferlab\nfrom transformers import pipeline",
                    "from transformers import pipeline\nimport transferlab"):
        out = run_python(f"{imports}\nprint(pipeline('text-classification', model={str(tiny_run / 'model')!r})"
                         f"({TEXTS[0]!r})[0]['label'])")
        assert out.strip() == Predictor(tiny_run).predict(TEXTS[:1])[0]["label"]


def test_sentence_pairs_score_through_the_pipeline(runs):
    run = runs["pairs"]
    pairs = [("A fine film.", "A good movie."), ("A fine film.", "The cat sat on the mat.")]
    ours = Predictor(run).predict([{"text": a, "text_pair": b} for a, b in pairs])
    scorer = pipeline("text-classification", model=str(run / "model"))
    theirs = scorer([{"text": a, "text_pair": b} for a, b in pairs], function_to_apply="none")
    assert [t["score"] for t in theirs] == pytest.approx([o["score"] for o in ours], abs=1e-4)


def test_token_classifier_is_a_plain_transformers_model(runs):
    """No transferlab in the loading process: BertForTokenClassification, the same logits and entities."""
    run = runs["tokens"]
    model_dir = run / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["BertForTokenClassification"]
    assert not (model_dir / "modeling_transferlab.py").exists()
    out = run_python(
        "import json, sys, torch\n"
        "from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline\n"
        f"d = {str(model_dir)!r}\n"
        "tok, model = AutoTokenizer.from_pretrained(d), AutoModelForTokenClassification.from_pretrained(d)\n"
        f"with torch.no_grad(): logits = model(**tok({SENTENCES!r}, padding=True, return_tensors='pt')).logits\n"
        "ner = pipeline('token-classification', model=d, aggregation_strategy='first')\n"
        f"ents = [[(e['entity_group'], e['start'], e['end']) for e in s] for s in ner({SENTENCES!r})]\n"
        "print(json.dumps({'transferlab': 'transferlab' in sys.modules, 'type': type(model).__name__,\n"
        "                  'logits': logits.tolist(), 'entities': ents}))")
    theirs = json.loads(out)
    assert not theirs["transferlab"] and theirs["type"] == "BertForTokenClassification"
    predictor = Predictor(run)
    frame = predictor.task.inputs_from_args(SENTENCES, {})
    ours = predictor.raw_outputs(frame)["logits"]
    for i in range(len(SENTENCES)):
        width = ours.shape[1]
        np.testing.assert_allclose(np.array(theirs["logits"][i])[:width], ours[i], atol=1e-4)
    entities = [[[e["type"], e["start"], e["end"]] for e in p["entities"]] for p in predictor.predict_frame(frame)]
    assert theirs["entities"] == entities


def test_qa_model_is_a_plain_transformers_model(runs):
    """transformers 5 has no QA pipeline; its AutoModelForQuestionAnswering gives transferlab's span logits."""
    model_dir = runs["qa"] / "model"
    out = run_python(
        "import json, torch\n"
        "from transformers import AutoModelForQuestionAnswering, AutoTokenizer\n"
        f"d = {str(model_dir)!r}\n"
        "tok, model = AutoTokenizer.from_pretrained(d), AutoModelForQuestionAnswering.from_pretrained(d)\n"
        f"with torch.no_grad(): out = model(**tok('Who directed Alien?', {CONTEXT!r}, return_tensors='pt'))\n"
        "print(json.dumps({'type': type(model).__name__, 'start': out.start_logits[0].tolist(),\n"
        "                  'end': out.end_logits[0].tolist()}))")
    theirs = json.loads(out)
    assert theirs["type"] == "BertForQuestionAnswering"
    raw = Predictor(runs["qa"]).raw_outputs(pd.DataFrame({"question": ["Who directed Alien?"], "context": [CONTEXT]}))
    np.testing.assert_allclose(theirs["start"], raw["start_logits"][0], atol=1e-4)
    np.testing.assert_allclose(theirs["end"], raw["end_logits"][0], atol=1e-4)


def test_import_transferlab_stays_light():
    """Neither `import transferlab` nor building the whole CLI loads torch, transformers or pandas."""
    out = run_python("import sys, transferlab, transferlab.cli as cli\ncli._register_commands()\n"
                     "import typer\ntyper.main.get_command(cli.app)\n"
                     "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'sklearn') if m in sys.modules))")
    assert out.strip() == "[]"
