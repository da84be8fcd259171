"""Token classification (NER): CoNLL/JSONL readers, sub-word alignment, spans, metrics, CLI train/predict/evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForTokenClassification

from transferlab.backbones import layer_groups, resolve_model_dir
from transferlab.backbones.text import TextProcessor, load_tokenizer
from transferlab.config import build_config
from transferlab.data.conll import bio_labels, load_tagged, to_iob2
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.pipeline import train_run
from transferlab.tasks.tokens import TokensTask, join_words, split_words, subtoken_words

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "data" / "silver_ner_train.conll"
DEV_JSONL = ROOT / "examples" / "data" / "silver_ner_dev.jsonl"
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TINY = ["--max-train-examples", "4", "--max-eval-examples", "3", "--max-length", "32", "--epochs", "1",
        "--batch-size", "4", "--set", "doctor.enabled=false"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_dir("minilm"))


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, transferlab_cli) -> Path:
    """A CRF NER model trained from examples/ner.yaml through the CLI (a few silver sentences, one step)."""
    out = tmp_path_factory.mktemp("ner")
    code = transferlab_cli("train", "--config", ROOT / "examples" / "ner.yaml", "--crf", "--output", out,
                           "--name", "ner", *TINY)
    assert code == 0
    return out / "ner"


# --- readers -------------------------------------------------------------------------------------------

def test_conll_reader_splits_sentences_skips_docstart_and_repairs_iob1(tmp_path, caplog):
    path = write(tmp_path / "a.conll", "-DOCSTART- -X- O O\n\nTom NNP B-PER\nHanks NNP I-PER\nsmiled VBD O\n\n\n"
                                       "in IN O\nParis NNP I-LOC\n")
    frame = load_tagged(path)
    assert frame["tokens"].tolist() == [["Tom", "Hanks", "smiled"], ["in", "Paris"]]
    assert frame["tags"].tolist() == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    assert "1 entities started with I-" in caplog.text
    assert bio_labels(frame["tags"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert to_iob2(["I-PER", "I-LOC", "I-LOC", "O"]) == ["B-PER", "B-LOC", "I-LOC", "O"]


def test_jsonl_reader_and_the_committed_silver_data():
    frame = load_tagged(DEV_JSONL)
    conll = load_tagged(ROOT / "examples" / "data" / "silver_ner_dev.conll")
    assert frame["tokens"].tolist() == conll["tokens"].tolist() and frame["tags"].tolist() == conll["tags"].tolist()
    assert 300 <= len(frame) <= 2000
    assert {"PERSON", "GPE", "ORG", "DATE"} <= {t[2:] for tags in frame["tags"] for t in tags if t != "O"}


@pytest.mark.parametrize("name, content, fragments", [
    ("x.conll", "Tom B-PER\nHanks\n", ["x.conll, line 2", "'Hanks' has no tag", "differ in length"]),
    ("x.conll", "Tom S-PER\n\nParis B-LOC\n", ["sentence 1 (line 1)", "BIOES", "S-X -> B-X"]),
    ("x.conll", "Paris O\n\nTom PER\n", ["sentence 2 (line 3)", "'PER' is not BIO", "B-TYPE"]),
    ("x.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n',
     ["x.jsonl, record 2", "2 tokens but 1 tags"]),
    ("x.jsonl", '{"tokens": "a b", "tags": ["O", "O"]}\n', ["record 1", "not a list of strings"]),
    ("x.jsonl", '{"words": ["a"], "tags": ["O"]}\n', ["no column 'tokens'", "ner.tokens_column"]),
])
def test_bad_tagged_data_is_a_user_error_naming_the_place(tmp_path, name, content, fragments):
    with pytest.raises(UserError) as err:
        load_tagged(write(tmp_path / name, content))
    for fragment in fragments:
        assert fragment in str(err.value)


# --- alignment and spans -------------------------------------------------------------------------------

def test_first_sub_token_carries_the_tag_and_the_rest_are_ignored(tokenizer):
    task = TokensTask(LABELS, TextProcessor(tokenizer, 32))
    frame = pd.DataFrame({"tokens": [["Hanks", "visited", "Paris"]], "tags": [["B-PER", "O", "B-LOC"]]})
    feature = task.encode(frame)[0]
    pieces = tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert pieces == ["[CLS]", "hank", "##s", "visited", "paris", "[SEP]"]
    assert feature["labels"] == [-100, 3, -100, 0, 1, -100]
    assert feature["tag_mask"] == [0, 1, 0, 1, 1, 0]
    assert feature["_word_starts"] == [1, 3, 4] and feature["_word_tags"] == [3, 0, 1]
    everything = TokensTask(LABELS, TextProcessor(tokenizer, 32), label_all_subtokens=True).encode(frame)[0]
    assert everything["labels"] == [-100, 3, 4, 0, 1, -100]  # B-PER continues as I-PER
    assert everything["tag_mask"] == [0, 1, 1, 1, 1, 0]


def test_words_cut_off_by_max_length_are_predicted_outside(tokenizer, caplog):
    task = TokensTask(LABELS, TextProcessor(tokenizer, 8))
    frame = pd.DataFrame({"tokens": [["Paris"] * 20], "tags": [["B-LOC"] * 20]})
    feature = task.encode(frame)[0]
    assert feature["_word_starts"][:6] == [1, 2, 3, 4, 5, 6] and set(feature["_word_starts"][6:]) == {-1}
    assert "longer than max_length 8" in caplog.text
    batch = task.collate([feature])
    logits = torch.zeros(1, 8, len(LABELS))
    logits[..., 1] = 1.0  # B-LOC everywhere the model sees
    out = task.outputs(type("Out", (), {"logits": logits, "predictions": logits.argmax(-1)})(), batch)
    assert out["pred"][0, :20].tolist() == [1] * 6 + [0] * 14
    assert task.metrics(out, frame)["recall"] == pytest.approx(6 / 20)


def test_raw_text_words_map_to_character_spans(tokenizer):
    text = "Tom Hanks flew to São Paulo, Brazil."
    words, spans = split_words(text)
    assert words == ["Tom", "Hanks", "flew", "to", "São", "Paulo", ",", "Brazil", "."]
    assert [text[s:e] for s, e in spans] == words
    assert join_words(["New", "York"]) == ("New York", [(0, 3), (4, 8)])
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    assert subtoken_words(offsets, spans)[:4] == [None, 0, 1, 1]  # [CLS], tom, hank, ##s
    task = TokensTask(["O", "B-GPE", "I-GPE", "B-PERSON", "I-PERSON"], TextProcessor(tokenizer, 32))
    tags = np.array([3, 4, 0, 0, 1, 2, 0, 1, 0])
    found = task.entities(text, spans, tags, np.linspace(0.5, 0.9, 9))
    assert [(e["type"], e["text"], text[e["start"]:e["end"]]) for e in found] == [
        ("PERSON", "Tom Hanks", "Tom Hanks"), ("GPE", "São Paulo", "São Paulo"), ("GPE", "Brazil", "Brazil")]
    assert found[0]["score"] == pytest.approx(0.525)


def test_entity_metrics_per_type(tokenizer):
    task = TokensTask(LABELS, TextProcessor(tokenizer, 32))
    gold = np.array([[3, 4, 0, 1, -100], [1, 2, 0, 3, 0]])
    pred = np.array([[3, 4, 0, 0, -100], [1, 2, 0, 3, 0]])
    metrics = task.metrics({"gold": gold, "pred": pred, "score": np.zeros_like(gold, dtype=float)}, pd.DataFrame())
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(0.75)
    assert metrics["per_class"]["LOC"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert metrics["per_class"]["PER"]["f1"] == 1.0


# --- training, saving, predicting ------------------------------------------------------------------------

def test_cli_train_saves_a_crf_model_that_reloads_through_the_auto_class(ner_run):
    metrics = json.loads((ner_run / "metrics.json").read_text())
    assert metrics["task"] == "tokens" and metrics["steps"] == 1
    assert {"precision", "recall", "f1", "token_accuracy", "per_class"} <= set(metrics["eval"])
    assert metrics["labels"][0] == "O" and "B-PERSON" in metrics["labels"]
    config = json.loads((ner_run / "model" / "config.json").read_text())
    assert config["crf"] is True and config["auto_map"]["AutoModelForTokenClassification"]
    ours = Predictor(ner_run / "model").run
    assert {"crf.transitions", "classifier.weight"} <= {n for n, _ in layer_groups(ours.model)["head"].params}
    auto = AutoModelForTokenClassification.from_pretrained(ner_run / "model", trust_remote_code=True).eval()
    batch = ours.task.processor.tokenizer(["Tom Hanks flew to Paris in 1998.", "A fine film."], padding=True,
                                          return_tensors="pt")
    with torch.no_grad():
        expected, got = ours.model(**batch), auto(**batch)
    assert torch.equal(expected.predictions, got.predictions)
    assert torch.allclose(expected.logits, got.logits, atol=1e-5)


def test_cli_predict_and_evaluate(ner_run, transferlab_cli, capsys, tmp_path):
    texts = ["Tom Hanks flew to Paris in 1998.", "Nothing here."]
    assert transferlab_cli("predict", ner_run, *texts, "--output", tmp_path / "p.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    for row in rows:
        for entity in row["entities"]:
            assert row["text"][entity["start"]:entity["end"]] == entity["text"] and 0 <= entity["score"] <= 1
    assert transferlab_cli("predict", ner_run, texts[0]) == 0
    assert texts[0] in capsys.readouterr().out
    dev = write(tmp_path / "dev.jsonl", "".join(DEV_JSONL.read_text().splitlines(keepends=True)[:4]))
    assert transferlab_cli("evaluate", ner_run, "--data", dev, "--output", tmp_path / "m.json") == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= metrics["f1"] <= 1 and 0 < metrics["token_accuracy"] <= 1 and "PERSON" in metrics["per_class"]


@pytest.mark.parametrize("strategy, phases", [
    ("freeze-attention", [{"head", *(f"layer.{i}.ffn" for i in range(6))}]),
    ("progressive:1", [{"head"}, {"head", "layer.5.attention", "layer.5.ffn"}]),
])
def test_strategies_train_the_token_head_through_layer_groups(tmp_path, strategy, phases):
    cfg = build_config({
        "name": "s", "output_dir": str(tmp_path), "task": "tokens", "seed": 3,
        "data": {"train": str(TRAIN), "max_train_examples": 4, "max_eval_examples": 3},
        "model": {"max_length": 32}, "strategy": {"name": strategy}, "doctor": {"enabled": False},
        "training": {"epochs": 2, "batch_size": 4, "log_every": 1}})
    doc = train_run(cfg, show_progress=False)
    assert [set(p["groups"]) for p in doc["plan"]] == phases
    assert np.isfinite(doc["eval_loss"]) and 0 <= doc["eval"]["f1"] <= 1
    model = Predictor(cfg.run_dir / "model").run.model
    head = [n for n, _ in layer_groups(model)["head"].params]
    assert head == ["classifier.weight", "classifier.bias"]
    assert model.classifier.bias.abs().sum() > 0  # the head learned (it starts at zero)


# --- bad input through the CLI -----------------------------------------------------------------------------

def test_user_errors_exit_2(ner_run, transferlab_cli, capsys, tmp_path):
    bad = write(tmp_path / "bad.conll", "Tom B-PER\nHanks E-PER\n\nParis B-LOC\n")
    assert transferlab_cli("train", "--task", "tokens", "--data", bad, "--output", tmp_path) == 2
    assert "bad.conll, sentence 1 (line 1)" in capsys.readouterr().err
    ragged = write(tmp_path / "bad.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n')
    assert transferlab_cli("train", "--task", "tokens", "--data", ragged, "--output", tmp_path) == 2
    assert "bad.jsonl, record 1: 2 tokens but 1 tags" in capsys.readouterr().err
    assert transferlab_cli("predict", ner_run, "--question", "Who?", "--context", "Tom.") == 2
    err = capsys.readouterr().err
    assert "needs a QA model" in err and "'tokens' model" in err
