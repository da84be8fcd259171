"""Export (ONNX, TorchScript), int8 quantization and the benchmark, on one copy of the tiny run.

One module, so the ONNX export the quantization and benchmark tests build on is made once.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest
from deploy_helpers import copy_run, run_cli

from transferlab.deploy.evalset import load_eval_set, score
from transferlab.deploy.export import PARITY_TOLERANCE, export_model
from transferlab.deploy.predictor import Predictor
from transferlab.deploy.quantize import quantize
from transferlab.errors import UserError


@pytest.fixture(scope="module")
def deploy_run(tiny_run, tmp_path_factory):
    """This module's own copy of the tiny run: exports write into its model directory."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("deploy") / "run")


TEXTS = ["Superb.", "The film drags badly in its second hour and never recovers from it.", "Fine, I guess.",
         "An absolute joy from start to finish, with a cast that clearly loved making it.", "meh"]


@pytest.fixture(scope="module")
def torch_predictor(deploy_run):
    return Predictor(deploy_run, "torch")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_any_batch_and_length(deploy_run, torch_predictor, fmt):
    result = export_model(deploy_run, fmt)
    assert result.path.is_file() and result.max_abs_diff <= PARITY_TOLERANCE
    exported = Predictor(result.path)
    assert exported.backend == fmt and exported.labels == torch_predictor.labels
    # batch sizes and lengths the trace never saw: one text, then padded batches
    for batch_size in (1, 2, 5):
        torch_predictor.batch_size = exported.batch_size = batch_size
        ref, got = torch_predictor.outputs(TEXTS)["logits"], exported.outputs(TEXTS)["logits"]
        assert np.abs(ref - got).max() <= PARITY_TOLERANCE
    assert [p["label"] for p in exported.predict(TEXTS)] == [p["label"] for p in torch_predictor.predict(TEXTS)]


def test_onnx_graph_has_dynamic_batch_and_sequence_axes(deploy_run):
    path = deploy_run / "model" / "model.onnx"
    if not path.is_file():
        export_model(deploy_run, "onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs["input_ids"] == ["batch", "sequence"] and inputs["attention_mask"] == ["batch", "sequence"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 2]


def test_predict_contract_is_kept(deploy_run, torch_predictor):
    preds = torch_predictor.predict(TEXTS[:2])
    assert [set(p) for p in preds] == [{"label", "score", "probabilities"}] * 2
    for p in preds:
        assert p["label"] in torch_predictor.labels
        assert p["score"] == max(p["probabilities"].values())
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
    assert torch_predictor.predict([]) == []


def test_bf16_autocast_stays_close_to_fp32(deploy_run, torch_predictor):
    torch_predictor.batch_size = 32
    bf16 = Predictor(deploy_run, "torch", precision="bf16", batch_size=32)
    assert bf16.name == "torch bf16" and torch_predictor.name == "torch fp32"
    ref, got = torch_predictor.outputs(TEXTS)["logits"], bf16.outputs(TEXTS)["logits"]
    assert got.dtype == np.float32 and not np.array_equal(ref, got)  # it did run in bf16...
    assert np.abs(ref - got).max() < 0.1  # ...within bf16's 8-bit mantissa of the fp32 logits
    with pytest.raises(UserError, match="bf16 applies to the fp32 torch backend, not to onnx"):
        Predictor(deploy_run, "onnx", precision="bf16")
    with pytest.raises(UserError, match="Unknown precision 'fp16'"):
        Predictor(deploy_run, "torch", precision="fp16")


def test_export_errors_are_user_errors(deploy_run, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="Unknown export format 'tflite'"):
        export_model(deploy_run, "tflite")
    with pytest.raises(UserError, match="neither a run directory"):
        export_model(tmp_path / "nowhere", "onnx")
    with pytest.raises(UserError, match="no onnx int8 model"):
        Predictor(deploy_run, "onnx", int8=True)
    code, _out, err = run_cli(monkeypatch, capsys, "export", str(tmp_path), "--format", "onnx")
    assert code == 2 and "neither a run directory" in err


def probabilities(predictor: Predictor, texts: list[str]) -> np.ndarray:
    logits = predictor.outputs(pd.DataFrame({"text": texts}))["logits"]
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def test_onnx_int8_is_smaller_and_agrees_with_fp32(deploy_run, monkeypatch, capsys):
    code, out, _err = run_cli(monkeypatch, capsys, "quantize", str(deploy_run), "--eval-limit", "40")
    assert code == 0
    fp32, int8 = deploy_run / "model" / "model.onnx", deploy_run / "model" / "model.int8.onnx"
    assert int8.stat().st_size < 0.75 * fp32.stat().st_size
    # the command prints both accuracies side by side
    assert "onnx fp32" in out and "onnx int8" in out and "Δ points" in out
    evalset = load_eval_set(deploy_run, limit=40)
    ref, q = Predictor(fp32), Predictor(int8)
    # the tiny run sits near chance, so a borderline prediction may flip: at most two of the 40
    assert abs(score(ref, evalset) - score(q, evalset)) <= 2 / 40 + 1e-9
    texts = evalset.frame["text"].tolist()
    assert np.abs(probabilities(ref, texts) - probabilities(q, texts)).max() < 0.1


def test_torch_int8_backend_saves_torchscript(deploy_run):
    path = quantize(deploy_run, "torch")
    assert path.name == "model.int8.torchscript.pt"
    texts = load_eval_set(deploy_run, limit=20).frame["text"].tolist()
    ref = probabilities(Predictor(deploy_run, "torch"), texts)
    # the saved TorchScript and quantization at load time are the same int8 model
    traced = probabilities(Predictor(path), texts)
    eager = probabilities(Predictor(deploy_run, "torch", int8=True), texts)
    assert np.abs(traced - eager).max() < 1e-4
    assert np.abs(traced - ref).max() < 0.1


def test_quantize_rejects_unknown_backend(deploy_run):
    with pytest.raises(UserError, match="Unknown quantization backend 'tensorrt'"):
        quantize(deploy_run, "tensorrt")


def test_benchmark_measures_every_variant(deploy_run, monkeypatch, capsys):
    if not (deploy_run / "model" / "model.int8.onnx").is_file():  # run alone, without the test above
        quantize(deploy_run, "onnx")
    code, out, _err = run_cli(monkeypatch, capsys, "benchmark", str(deploy_run), "--repeats", "3", "--warmup", "1",
                              "--batches", "1", "--eval-limit", "16")
    assert code == 0
    doc = json.loads((deploy_run / "benchmark.json").read_text())
    names = [v["variant"] for v in doc["variants"]]
    assert names[0] == "torch fp32" and {"onnx fp32", "onnx int8"} <= set(names)
    for row in doc["variants"]:
        assert row["size_mb"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["throughput_per_s"] > 0 and 0 <= row["score"] <= 1 and row["metric"] == "accuracy"
    assert "benchmark of" in out and "Δ points" in out
    sizes = {v["variant"]: v["size_mb"] for v in doc["variants"]}
    assert sizes["onnx int8"] < sizes["onnx fp32"]
    assert (deploy_run / "plots" / "benchmark.png").stat().st_size > 0
