"""Export to ONNX and TorchScript: dynamic axes, parity with PyTorch on real inputs, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from deploy_helpers import copy_run, run_cli

from transferlab.deploy.export import PARITY_TOLERANCE, export_model
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError


@pytest.fixture(scope="module")
def deploy_run(tiny_run, tmp_path_factory):
    """This module's own copy of the tiny run: exports write into its model directory."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("export") / "run")


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


def test_export_errors_are_user_errors(deploy_run, tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="Unknown export format 'tflite'"):
        export_model(deploy_run, "tflite")
    with pytest.raises(UserError, match="neither a run directory"):
        export_model(tmp_path / "nowhere", "onnx")
    with pytest.raises(UserError, match="no onnx int8 model"):
        Predictor(deploy_run, "onnx", int8=True)
    code, _out, err = run_cli(monkeypatch, capsys, "export", str(tmp_path), "--format", "onnx")
    assert code == 2 and "neither a run directory" in err
