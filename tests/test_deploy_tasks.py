"""The deploy chain for every task, not only classification: NER (CRF decoded outside the exported graph), QA
(spans decoded over document windows) and text-to-text (generation on the torch backend, int8 at load time)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transferlab.deploy.benchmark import Settings, benchmark_run
from transferlab.deploy.export import PARITY_TOLERANCE, export_model
from transferlab.deploy.predictor import Predictor
from transferlab.deploy.prune import prune_run
from transferlab.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data"
TINY = ["--max-train-examples", "8", "--max-eval-examples", "4", "--epochs", "1", "--batch-size", "4",
        "--set", "doctor.enabled=false"]
SENTENCES = ["Tom Hanks flew to Paris in 1998.", "Nothing here.", "Maria met John Smith in Berlin last May."]
CONTEXT = "Rio Danisworo (Marcellius Siahaan) is a young producer in Jakarta. He meets Renata in 2004."


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, transferlab_cli) -> Path:
    out = tmp_path_factory.mktemp("ner")
    assert transferlab_cli("train", "--config", ROOT / "examples" / "ner.yaml", "--crf", "--output", out,
                           "--name", "ner", "--max-length", "32", *TINY) == 0
    return out / "ner"


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, transferlab_cli) -> Path:
    out = tmp_path_factory.mktemp("qa")
    doc = json.loads((DATA / "silver_qa_dev.json").read_text())
    doc["data"] = doc["data"][:3]
    small = out / "qa.json"
    small.write_text(json.dumps(doc))
    assert transferlab_cli("train", "--config", ROOT / "examples" / "qa.yaml", "--data", small, "--eval-data", small,
                           "--output", out, "--name", "qa", "--max-length", "64", "--set", "qa.doc_stride=16",
                           *TINY) == 0
    return out / "qa"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_crf_tagger_exports_and_decodes_outside_the_graph(ner_run, fmt):
    result = export_model(ner_run, fmt)
    assert result.max_abs_diff <= PARITY_TOLERANCE
    eager, exported = Predictor(ner_run), Predictor(result.path)
    assert exported.task.crf_layer is not None  # the Viterbi step runs in Python on the graph's tag scores
    got, want = exported.predict(SENTENCES), eager.predict(SENTENCES)
    spans = [[{k: v for k, v in e.items() if k != "score"} for e in p["entities"]] for p in (*got, *want)]
    assert spans[:len(got)] == spans[len(got):]  # the same entities; scores within the graph's rounding
    scores = [e["score"] for p in (*got, *want) for e in p["entities"]]
    assert scores[:len(scores) // 2] == pytest.approx(scores[len(scores) // 2:], abs=1e-5)


def test_a_qa_model_exports_int8_and_answers_over_windows(qa_run, transferlab_cli, capsys, monkeypatch):
    from transferlab.commands import deploy

    monkeypatch.setattr(deploy.console, "width", 200)
    rows = [{"question": "Who plays Rio?", "context": CONTEXT}, {"question": "When?", "context": CONTEXT}]
    export = export_model(qa_run, "onnx")
    assert export.max_abs_diff <= PARITY_TOLERANCE
    assert Predictor(export.path).predict(rows) == Predictor(qa_run).predict(rows)
    assert transferlab_cli("quantize", qa_run, "--eval-limit", "3", "--repeats", "2") == 0
    out = capsys.readouterr().out
    assert "onnx int8" in out and "f1" in out  # QA's own metric, beside fp32
    int8 = Predictor(qa_run, "onnx", int8=True).predict(rows)
    assert all(CONTEXT[a["start"]:a["end"]] == a["answer"] for a in int8 if a["start"] >= 0)


def test_benchmark_and_pruning_report_the_tasks_own_metric(ner_run):
    doc = benchmark_run(ner_run, Settings(repeats=3, warmup=1, throughput_batches=1, throughput_repeats=1))
    assert {row["metric"] for row in doc["variants"]} == {"f1"}
    assert all(0 <= row["score"] <= 1 for row in doc["variants"])
    pruned = prune_run(ner_run, "magnitude", 0.2, show_progress=False)
    assert Predictor(pruned.model_dir).predict(SENTENCES[:1])[0]["entities"] is not None


def test_text_to_text_generates_on_torch_and_refuses_a_graph_export(tmp_path, transferlab_cli, capsys, monkeypatch):
    assert transferlab_cli("train", "--config", ROOT / "examples" / "text2text.yaml", "--output", tmp_path,
                           "--name", "t2t", "--max-length", "32", "--set", "text2text.max_target_length=6",
                           "--set", "training.precision=fp32", *TINY) == 0
    run = tmp_path / "t2t"
    source = [{"source": "A retired teacher travels across Europe to find her lost brother."}]
    fp32, int8 = Predictor(run).predict(source), Predictor(run, "torch", int8=True).predict(source)
    assert isinstance(fp32[0]["generated"], str) and isinstance(int8[0]["generated"], str)
    with pytest.raises(UserError, match="token by token"):
        export_model(run, "onnx")
    from transferlab.commands import deploy

    monkeypatch.setattr(deploy.console, "width", 200)  # the table whole, not folded
    capsys.readouterr()
    assert transferlab_cli("quantize", run, "--backend", "torch", "--eval-limit", "2", "--repeats", "2") == 0
    out = capsys.readouterr().out
    assert "torch int8" in out and "rougeL" in out
    assert np.isfinite(json.loads((run / "metrics.json").read_text())["eval"]["rougeL"])
