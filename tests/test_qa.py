"""Extractive QA: SQuAD reader, windows over long contexts, span search, EM/F1, CLI train/predict/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForQuestionAnswering

from transferlab.backbones import resolve_model_dir
from transferlab.backbones.text import TextProcessor, load_tokenizer
from transferlab.config import build_config
from transferlab.data.squad import load_squad
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.pipeline import train_run
from transferlab.tasks.qa import QaTask, answer_f1, best_span, normalize_answer, squad_metrics

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
TINY = ["--max-train-examples", "4", "--max-eval-examples", "3", "--max-length", "64", "--epochs", "1",
        "--batch-size", "4", "--set", "doctor.enabled=false", "--set", "qa.doc_stride=16"]
CONTEXT = "Rio Danisworo (Marcellius Siahaan) is a young producer in Jakarta. He meets Renata in 2004."


def squad(*qas: dict, context: str = CONTEXT) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": list(qas)}]}]}


def write_json(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_dir("minilm"))


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> dict[str, Path]:
    """The paragraphs with the shortest contexts of each committed set (quick to train on), as SQuAD files."""
    out = tmp_path_factory.mktemp("squad")
    files = {}
    for name, count in (("train", 4), ("dev", 3), ("v2_dev", 4)):
        doc = json.loads((DATA / f"silver_qa_{name}.json").read_text())
        shortest = sorted(doc["data"], key=lambda article: len(article["paragraphs"][0]["context"]))[:count]
        files[name] = write_json(out / f"{name}.json", {"version": doc["version"], "data": shortest})
    return files


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, transferlab_cli, short) -> Path:
    """A QA model trained from examples/qa.yaml through the CLI (a few synthetic questions, one step)."""
    out = tmp_path_factory.mktemp("qa")
    assert transferlab_cli("train", "--config", ROOT / "examples" / "qa.yaml", "--data", short["train"],
                           "--eval-data", short["dev"], "--output", out, "--name", "qa", *TINY) == 0
    return out / "qa"


# --- reader ----------------------------------------------------------------------------------------------

def test_reader_checks_answers_against_their_context(tmp_path, caplog):
    doc = squad({"id": "q1", "question": "Who plays Rio?", "answers": [{"text": "Marcellius Siahaan",
                                                                       "answer_start": 15}]},
                {"id": "q2", "question": "Where?", "answers": [{"text": "Jakarta", "answer_start": 3}]})
    frame = load_squad(write_json(tmp_path / "a.json", doc))
    assert frame["id"].tolist() == ["q1", "q2"] and frame["context"].iloc[0] == CONTEXT
    assert frame["answers"].iloc[1] == [{"text": "Jakarta", "answer_start": CONTEXT.index("Jakarta")}]
    assert "1 answers had an answer_start" in caplog.text


def test_committed_synthetic_sets_read_cleanly():
    train, dev = load_squad(DATA / "silver_qa_train.json"), load_squad(DATA / "silver_qa_dev.json")
    assert len(train) >= 500 and len(dev) >= 150
    assert not set(train["context"]) & set(dev["context"])
    v2 = load_squad(DATA / "silver_qa_v2_dev.json", with_negative=True)
    assert 0 < (v2["answers"].map(len) == 0).sum() < len(v2)


@pytest.mark.parametrize("doc, fragments", [
    (squad({"id": "q7", "question": "Who?", "answers": [{"text": "Tom Hanks", "answer_start": 0}]}),
     ["'Tom Hanks'", "question 'q7'", "not in its context"]),
    (squad({"id": "q8", "question": "Who?", "answers": [], "is_impossible": True}),
     ["question 'q8' has no answer", "qa.version_2_with_negative=true"]),
    (squad({"id": "q9", "answers": []}), ["question 'q9'", "has no 'question'"]),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, ["data[0].paragraphs[0] has no 'context'"]),
    ([1, 2], ['no top-level "data" list']),
])
def test_bad_squad_files_are_user_errors(tmp_path, doc, fragments):
    with pytest.raises(UserError) as err:
        load_squad(write_json(tmp_path / "bad.json", doc))
    for fragment in fragments:
        assert fragment in str(err.value)


# --- metrics and span search -------------------------------------------------------------------------------

def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert answer_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    metrics = squad_metrics(["Cat", "dog", ""], [["the cat", "a kitten"], ["a wolf"], []])
    assert metrics["exact_match"] == pytest.approx(2 / 3) and metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["has_answer_f1"] == 0.5 and metrics["no_answer_accuracy"] == 1.0


def test_best_span_respects_order_length_and_context():
    offsets = np.array([[-1, -1], [-1, -1], [0, 3], [4, 9], [10, 12], [13, 20], [-1, -1]])
    start = np.array([9.0, 9.0, 0.0, 5.0, 0.0, 6.0, 9.0])  # the question and specials never win
    end = np.array([9.0, 9.0, 0.0, 4.0, 0.0, 1.0, 9.0])
    assert best_span(start, end, offsets, max_answer_length=30)[:2] == (4, 9)  # end >= start: not (13, 9)
    end[5] = 4.5
    assert best_span(start, end, offsets, max_answer_length=30)[:2] == (13, 20)
    start[5], end[3], end[4] = 0.0, 0.0, 2.0
    assert best_span(start, end, offsets, max_answer_length=30)[:2] == (4, 20)
    assert best_span(start, end, offsets, max_answer_length=2)[:2] == (4, 12)  # (4, 20) is 3 tokens long
    char_start, char_end, score, no_answer = best_span(start, end, offsets, 30)
    assert 0 < score <= 1 and 0 < no_answer < 1


def test_long_contexts_become_overlapping_windows_that_decode_to_the_gold_answer(tokenizer):
    """Perfect logits from the gold token positions give back exactly the gold answers: the offsets, windows
    and best-window choice compose without loss."""
    context = " ".join(f"Sentence {i} mentions nobody in particular." for i in range(30)) + " Paris is lovely."
    frame = pd.DataFrame({"id": ["a", "b"], "question": ["Which place?", "Which sentence?"],
                          "context": [context, context],
                          "answers": [[{"text": "Paris", "answer_start": context.index("Paris")}],
                                      [{"text": "Sentence 3", "answer_start": context.index("Sentence 3")}]]})
    task = QaTask(TextProcessor(tokenizer, 64), doc_stride=16, max_answer_length=10)
    features = task.encode(frame)
    assert len(features) > 6 and {f["_example"] for f in features} == {0, 1}
    answered = [f for f in features if f["start_positions"] > 0]
    assert len(answered) >= 2 and len(answered) < len(features)  # most windows hold neither answer
    for f in answered:
        begin, end = f["_offsets"][f["start_positions"]][0], f["_offsets"][f["end_positions"]][1]
        assert context[begin:end] in ("Paris", "Sentence 3")
    batch = task.collate(features)
    hot = torch.full(batch["input_ids"].shape, -10.0)
    starts, ends = hot.clone(), hot.clone()
    rows = torch.arange(len(features))
    starts[rows, batch["start_positions"]] = 10.0
    ends[rows, batch["end_positions"]] = 10.0
    out = task.outputs(type("Out", (), {"start_logits": starts, "end_logits": ends})(), batch)
    assert task.metrics(out, frame) == {"exact_match": 1.0, "f1": 1.0, "questions": 2}
    assert [a["answer"] for a in task.answers(out, frame)] == ["Paris", "Sentence 3"]


def test_a_question_too_long_for_the_window_names_the_question(tokenizer):
    frame = pd.DataFrame({"id": ["long-one"], "question": ["why " * 70], "context": [CONTEXT], "answers": [[]]})
    with pytest.raises(UserError, match="'long-one' has 70 tokens.*qa.doc_stride"):
        QaTask(TextProcessor(tokenizer, 96), doc_stride=32).encode(frame)


# --- training, saving, predicting --------------------------------------------------------------------------

def test_cli_train_saves_a_model_that_reloads_through_the_auto_class(qa_run):
    metrics = json.loads((qa_run / "metrics.json").read_text())
    assert metrics["task"] == "qa" and metrics["train_examples"] == 4 and metrics["eval_examples"] == 3
    assert {"exact_match", "f1", "questions"} <= set(metrics["eval"]) and metrics["eval"]["questions"] == 3
    ours = Predictor(qa_run / "model")
    assert (ours.task.doc_stride, ours.task.processor.max_length) == (16, 64)
    auto = AutoModelForQuestionAnswering.from_pretrained(qa_run / "model", trust_remote_code=True).eval()
    batch = ours.task.processor.tokenizer(["Who plays Rio?"], [CONTEXT], return_tensors="pt")
    with torch.no_grad():
        expected, got = ours.run.model(**batch), auto(**batch)
    assert torch.allclose(expected.start_logits, got.start_logits, atol=1e-5)
    assert torch.allclose(expected.end_logits, got.end_logits, atol=1e-5)


def test_cli_predict_question_context_and_evaluate(qa_run, transferlab_cli, capsys, tmp_path, short):
    assert transferlab_cli("predict", qa_run, "--question", "Who plays Rio?", "--question", "Where does he work?",
                           "--context", CONTEXT, "--output", tmp_path / "a.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["Who plays Rio?", "Where does he work?"]
    for row in rows:
        assert row["answer"] and CONTEXT[row["start"]:row["end"]] == row["answer"] and 0 < row["score"] <= 1
    assert transferlab_cli("predict", qa_run, "--question", "Who plays Rio?", "--context", CONTEXT) == 0
    assert "Who plays Rio?" in capsys.readouterr().out
    assert transferlab_cli("evaluate", qa_run, "--data", short["v2_dev"], "--output", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["questions"] == 16 and "no_answer_accuracy" in metrics  # v2 data on a v1 model: never ""
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 1


@pytest.mark.parametrize("strategy, v2", [("freeze-attention", False), ("llrd", True)])
def test_strategies_train_qa_through_layer_groups(tmp_path, short, strategy, v2):
    """Also SQuAD v2: unanswerable questions train towards position 0 and can be answered with ""."""
    train, evaluation = (short["v2_dev"], short["dev"]) if v2 else (short["train"], short["dev"])
    cfg = build_config({
        "name": "s", "output_dir": str(tmp_path), "task": "qa", "seed": 3,
        "data": {"train": str(train), "eval": str(evaluation), "max_train_examples": 4, "max_eval_examples": 3},
        "qa": {"doc_stride": 16, "version_2_with_negative": v2},
        "model": {"max_length": 64}, "strategy": {"name": strategy}, "doctor": {"enabled": False},
        "training": {"epochs": 1, "batch_size": 4, "log_every": 1}})
    doc = train_run(cfg, show_progress=False)
    groups = doc["plan"][0]["groups"]
    assert "head" in groups and any(g.endswith(".ffn") for g in groups)
    if strategy == "freeze-attention":
        assert not any(g.endswith(".attention") for g in groups)
    else:
        assert groups["layer.0.ffn"] < groups["layer.5.ffn"]  # lower layers learn more slowly
    assert np.isfinite(doc["eval_loss"]) and 0 <= doc["eval"]["f1"] <= 1
    assert "no_answer_accuracy" not in doc["eval"]  # the dev questions all have answers


# --- bad input through the CLI -----------------------------------------------------------------------------

def test_user_errors_exit_2(qa_run, transferlab_cli, capsys, tmp_path):
    missing = write_json(tmp_path / "bad.json", squad({"id": "q-404", "question": "Who?",
                                                       "answers": [{"text": "Godzilla", "answer_start": 0}]}))
    assert transferlab_cli("train", "--task", "qa", "--data", missing, "--output", tmp_path) == 2
    err = capsys.readouterr().err
    assert "answer 'Godzilla' of question 'q-404' is not in its context" in err
    assert transferlab_cli("predict", qa_run, "just a text") == 2
    assert "needs --question and --context" in capsys.readouterr().err
    assert transferlab_cli("evaluate", qa_run, "--data", DATA / "silver_ner_dev.conll") == 2
    assert "not a .json file" in capsys.readouterr().err
