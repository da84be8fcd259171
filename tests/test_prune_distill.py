"""Pruning (magnitude, attention heads) and distillation: real shrinking, HF-format round trips, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from deploy_helpers import copy_run, run_cli
from transformers import AutoModelForSequenceClassification

from transferlab.deploy.artifacts import variants
from transferlab.deploy.distill import DistillationModel, distill_run, make_student, pick_layers
from transferlab.deploy.export import PARITY_TOLERANCE, export_model
from transferlab.deploy.predictor import Predictor, load_saved_task
from transferlab.deploy.prune import count_parameters, prune_run, sparsity
from transferlab.errors import UserError

TEXTS = ["A quiet masterpiece.", "Two hours of my life I will not get back, and a soundtrack that grates.", "ok"]


@pytest.fixture(scope="module")
def deploy_run(tiny_run, tmp_path_factory):
    """This module's own copy of the tiny run: derived models are saved inside it."""
    return copy_run(tiny_run, tmp_path_factory.mktemp("prune") / "run")


@pytest.fixture(scope="module")
def teacher(deploy_run):
    return load_torch_model(deploy_run / "model")


@pytest.fixture(scope="module")
def heads_pruned(deploy_run):
    return prune_run(deploy_run, "heads", 0.25, importance_examples=64, show_progress=False)


def encoded(predictor: Predictor, texts: list[str]) -> dict[str, torch.Tensor]:
    """The model inputs of `texts` as the predictor's task encodes them."""
    batch = predictor.task.collate(predictor.task.encode(pd.DataFrame({"text": texts})))
    return {name: batch[name] for name in predictor.input_names}


def load_torch_model(model_dir) -> torch.nn.Module:
    return load_saved_task(model_dir).load_model(model_dir)


def logits(model, predictor: Predictor) -> np.ndarray:
    with torch.no_grad():
        return model(**encoded(predictor, TEXTS)).logits.numpy()


def test_magnitude_pruning_zeroes_the_share_asked_and_reloads(deploy_run):
    result = prune_run(deploy_run, "magnitude", 0.3, show_progress=False)
    assert result.sparsity == pytest.approx(0.3, abs=0.005)
    reloaded = load_torch_model(result.model_dir)
    assert sparsity(reloaded) == pytest.approx(result.sparsity, abs=1e-6)
    # dense storage: the same parameter count, 30% of the encoder weights now zero
    assert count_parameters(reloaded)[0] == result.parameters > result.nonzero
    assert [p["label"] for p in Predictor(result.model_dir).predict(TEXTS)]


def test_head_pruning_shrinks_the_model_and_round_trips(deploy_run, teacher, heads_pruned):
    removed = heads_pruned.removed_heads
    assert sum(map(len, removed.values())) == round(0.25 * 6 * 12)
    assert heads_pruned.parameters < count_parameters(teacher)[0]
    model = load_torch_model(heads_pruned.model_dir)
    for i, layer in enumerate(model.backbone.encoder.layer):
        kept = 12 - len(removed.get(i, []))
        assert kept >= 1 and layer.attention.self.query.out_features == 32 * kept
    # plain Hugging Face loading (the model's own code file) rebuilds the same pruned model
    hf = AutoModelForSequenceClassification.from_pretrained(str(heads_pruned.model_dir), trust_remote_code=True)
    predictor = Predictor(heads_pruned.model_dir)
    assert np.abs(logits(hf.eval(), predictor) - predictor.outputs(pd.DataFrame({"text": TEXTS}))["logits"]).max() \
        < 1e-5


def test_head_pruned_model_exports_to_onnx(heads_pruned):
    assert export_model(heads_pruned.model_dir, "onnx").max_abs_diff <= PARITY_TOLERANCE


def test_recovery_fine_tuning_keeps_the_pruned_weights_at_zero(deploy_run):
    result = prune_run(deploy_run, "magnitude", 0.5, epochs=0.1, lr=1e-4, show_progress=False)
    assert 0 <= result.finetune_metrics["accuracy"] <= 1
    assert result.sparsity >= 0.5 - 0.005  # the masks stayed on while the optimizer stepped


def test_student_from_every_layer_is_an_exact_copy(teacher, deploy_run):
    predictor = Predictor(deploy_run)
    copy = make_student(teacher, list(range(6))).eval()
    assert np.abs(logits(copy, predictor) - logits(teacher, predictor)).max() < 1e-6
    student = make_student(teacher, pick_layers(6, 3))
    assert student.config.backbone["num_hidden_layers"] == 3 and len(student.backbone.encoder.layer) == 3
    assert torch.equal(student.backbone.encoder.layer[2].output.dense.weight,
                       teacher.backbone.encoder.layer[5].output.dense.weight)


def test_distillation_loss_mixes_soft_and_hard_targets(teacher, deploy_run):
    student = make_student(teacher, pick_layers(6, 2))
    batch = encoded(Predictor(deploy_run), TEXTS)
    labels = torch.tensor([1, 0, 1])
    hard = DistillationModel(student, teacher, ("logits",), 2, alpha=0.0).eval()(labels=labels, **batch).loss
    soft = DistillationModel(student, teacher, ("logits",), 2, alpha=1.0).eval()(labels=labels, **batch).loss
    with torch.no_grad():
        s, t = student(**batch).logits, teacher(**batch).logits
    assert hard.item() == pytest.approx(torch.nn.functional.cross_entropy(s, labels).item(), rel=1e-5)
    expected = torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.softmax(t / 2, -1),
                                          reduction="batchmean") * 4
    assert soft.item() == pytest.approx(expected.item(), rel=1e-5)
    wrapper = DistillationModel(student, teacher, ("logits",)).train()
    assert wrapper.student.training and not wrapper.teacher.training


def test_distill_trains_a_smaller_student(deploy_run, teacher):
    out, layers, metrics = distill_run(deploy_run, student_layers=2, epochs=0.1, show_progress=False)
    assert layers == [2, 5] and 0 <= metrics["accuracy"] <= 1
    student = load_torch_model(out)
    assert count_parameters(student)[0] < count_parameters(teacher)[0]
    names = [v.name for v in variants(deploy_run)]
    assert {"torch fp32", "distilled torch fp32", "pruned-magnitude torch fp32"} <= set(names)


def test_bad_options_are_user_errors(deploy_run, monkeypatch, capsys):
    with pytest.raises(UserError, match="--amount 1.5 is out of range"):
        prune_run(deploy_run, "magnitude", 1.5)
    with pytest.raises(UserError, match="Unknown pruning method 'random'"):
        prune_run(deploy_run, "random", 0.3)
    with pytest.raises(UserError, match="--student-layers 6: the teacher has 6 layers"):
        pick_layers(6, 6)
    code, _out, err = run_cli(monkeypatch, capsys, "prune", str(deploy_run / "model" / ".."), "--amount", "0")
    assert code == 2 and "out of range" in err
    code, _out, err = run_cli(monkeypatch, capsys, "distill", "--teacher", str(deploy_run / "missing"))
    assert code == 2 and "neither a run directory" in err
