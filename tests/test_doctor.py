"""The doctor's pitfall guards: each one triggered by a history or plan built for it, and left quiet otherwise."""

from __future__ import annotations

import json
import logging

from transferlab.backbones.groups import LayerGroup, LayerGroups
from transferlab.commands.common import print_warnings
from transferlab.config import DoctorConfig, TrainingConfig
from transferlab.strategies.plan import Phase, ResolvedPhase
from transferlab.training import doctor
from transferlab.training.doctor import Doctor

CFG = DoctorConfig()
NAMES = ["embeddings", "layer.0.attention", "layer.0.ffn", "layer.1.attention", "layer.1.ffn", "head"]
GROUPS = LayerGroups([LayerGroup("embeddings", 0, "embeddings", "encoder", "embeddings"),
                      *(LayerGroup(f"layer.{i}.{kind}", i + 1, kind, "encoder", f"layer.{i}")
                        for i in range(2) for kind in ("attention", "ffn")),
                      LayerGroup("head", 3, "head", "head", "head")])


def phase(lrs: dict[str, float], epochs: float = 3) -> ResolvedPhase:
    return ResolvedPhase(Phase(epochs=epochs, lrs=lrs), lrs, trainable_params=len(lrs) * 1000, total_params=6000)


def codes(findings) -> list[str]:
    return [f.code for f in findings]


def train_records(losses: list[float], phase_index: int = 0, start: int = 0) -> list[dict]:
    return [{"kind": "train", "step": start + 10 * (i + 1), "phase": phase_index, "loss": loss}
            for i, loss in enumerate(losses)]


def eval_records(losses: list[float], every: int = 20) -> list[dict]:
    return [{"kind": "eval", "step": every * (i + 1), "epoch": float(i + 1), "phase": 0, "loss": loss,
             "metrics": {"accuracy": 0.8}} for i, loss in enumerate(losses)]


FULL = {g: 3e-5 for g in NAMES}


def test_full_finetuning_is_embeddings_and_every_layer():
    assert doctor.is_full_finetuning(FULL, GROUPS)
    assert not doctor.is_full_finetuning({g: 3e-5 for g in NAMES if g != "layer.0.attention"}, GROUPS)
    assert not doctor.is_full_finetuning({g: 3e-5 for g in NAMES if g != "embeddings"}, GROUPS)


def test_high_lr_warns_for_any_pretrained_layer():
    hot = {**FULL, "layer.1.ffn": 5e-4}
    found = doctor.check_pretrained_lr([phase(hot)], GROUPS, CFG)
    assert codes(found) == ["lr-too-high"]
    assert "whole model" in found[0].message and "lr 5.0e-04" in found[0].message
    assert "--lr" in found[0].fix
    # only part of the body learning too fast is caught too, named with its share of the parameters
    partial = doctor.check_pretrained_lr([phase({"layer.1.ffn": 1e-2, "head": 1e-3})], GROUPS, CFG)
    assert codes(partial) == ["lr-too-high"] and "layer.1.ffn @ 1.0e-02" in partial[0].message
    # a high lr for a new head alone is fine
    assert doctor.check_pretrained_lr([phase({**FULL, "head": 1e-3})], GROUPS, CFG) == []
    assert doctor.check_pretrained_lr([phase({"head": 1e-2})], GROUPS, CFG) == []


def test_high_lr_of_a_pretrained_head_is_caught():
    """An encoder-decoder whose tied embeddings sit in its (pretrained) head: that head at lr 1e-2 is a warning."""
    t5 = LayerGroups([LayerGroup("layer.0.attention", 1, "attention", "encoder", "layer.0"),
                      LayerGroup("head", 2, "head", "head", "head")], new_head=False)
    assert codes(doctor.check_pretrained_lr([phase({"head": 1e-2})], t5, CFG)) == ["lr-too-high"]


def test_new_weights_and_biases_at_their_recipes_lr_are_not_flagged():
    """LoRA's adapters are new weights and BitFit's 1e-3 on biases is its recipe: neither overwrites pretraining,
    but the same lr on a whole pretrained group still warns."""
    adapters = LayerGroups([*GROUPS, LayerGroup("layer.1.attention.adapter", 2, "adapter", "encoder", "layer.1")])
    assert doctor.check_pretrained_lr([phase({"layer.1.attention.adapter": 5e-4, "head": 1e-3})], adapters, CFG) == []
    assert doctor.check_pretrained_lr([phase({"layer.1.ffn@bias": 1e-3, "head": 1e-3})], GROUPS, CFG) == []
    assert codes(doctor.check_pretrained_lr([phase({"layer.1.ffn": 1e-3})], GROUPS, CFG)) == ["lr-too-high"]


def test_small_dataset_with_full_finetuning():
    assert codes(doctor.check_small_data([phase(FULL)], GROUPS, 120, CFG)) == ["small-data-full-finetuning"]
    assert doctor.check_small_data([phase(FULL)], GROUPS, 5000, CFG) == []
    assert doctor.check_small_data([phase({"head": 1e-3})], GROUPS, 120, CFG) == []


def test_too_few_epochs_for_the_data_size_names_the_epochs_needed():
    found = doctor.check_short_training(8, [phase({"head": 1e-3}, epochs=1)], CFG, "120 training examples")
    assert codes(found) == ["too-few-epochs"]
    assert "--epochs 7" in found[0].fix  # 8 updates per epoch, 50 wanted
    assert doctor.check_short_training(8, [phase({"head": 1e-3}, epochs=7)], CFG, "") == []
    assert doctor.check_short_training(600, [phase({"head": 1e-3}, epochs=1)], CFG, "") == []


class _Accelerator:
    num_processes = 2


class _Encoded:
    frame = [None] * 40  # 40 questions ...
    features = [None] * 90  # ... in 90 document windows


class _StartingTrainer:
    """What the doctor reads when training starts: the encoded set, the processes, the update count."""

    train_set, accelerator, history = _Encoded(), _Accelerator(), []

    def updates_per_epoch(self) -> int:
        return 3  # ceil(ceil(90 / 16) / 2 processes)


def test_update_count_is_what_runs_and_is_logged_once(caplog):
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        for main in (True, False):  # the main process and another one of the same run
            watcher = Doctor(CFG, [phase({"head": 1e-3}, epochs=1)], GROUPS, 40, TrainingConfig(batch_size=16),
                             main_process=main)
            watcher.on_fit_start(_StartingTrainer())
    lines = [r.getMessage() for r in caplog.records if "too-few-epochs" in r.getMessage()]
    assert len(lines) == 1
    assert "40 training examples (90 encoded features" in lines[0] and "on 2 processes give 3 optimizer" in lines[0]


def test_collapsed_model():
    collapsed = {"confusion_matrix": [[0, 45], [0, 55]], "per_class": {"neg": {}, "pos": {}}, "roc_auc": 0.51}
    found = doctor.check_collapse(collapsed, CFG)
    assert codes(found) == ["collapsed-model"]
    assert "'pos' for 100%" in found[0].message and "55%" in found[0].message and "ROC-AUC 0.51" in found[0].message
    assert doctor.check_collapse({"confusion_matrix": [[40, 5], [10, 45]]}, CFG) == []
    assert doctor.check_collapse({"spearman": 0.1}, CFG) == []


def test_restored_phase_is_said_in_words():
    class State:
        best_phase, best_metric, best_step = 0, 0.71, 4

    plan = [ResolvedPhase(Phase(name="head", lrs={"head": 1e-3}), {"head": 1e-3}, 1, 2),
            ResolvedPhase(Phase(name="+ layer.1", lrs={"head": 1e-4}), {"head": 1e-4}, 1, 2)]
    found = doctor.check_restored_phase(State(), plan, 1, "accuracy", restore_best=True)
    assert codes(found) == ["best-weights-from-earlier-phase"]
    assert "phase 1 (head) of 2" in found[0].message and "phase 2 (+ layer.1) learned is discarded" in \
        found[0].message
    assert doctor.check_restored_phase(State(), plan, 1, "accuracy", restore_best=False) == []
    assert doctor.check_restored_phase(State(), plan, 0, "accuracy", restore_best=True) == []


def test_rising_training_loss():
    found = doctor.check_train_loss(train_records([0.6, 0.62, 0.7, 0.8, 0.9, 1.1]), CFG)
    assert codes(found) == ["train-loss-rising"]
    assert doctor.check_train_loss(train_records([0.7, 0.6, 0.5, 0.45, 0.4, 0.38]), CFG) == []


def test_loss_jump_at_a_new_phase_is_not_a_rise():
    history = train_records([0.7, 0.5, 0.4, 0.35]) + train_records([0.9, 0.6, 0.4, 0.3], 1, start=40)
    assert doctor.check_train_loss(history, CFG) == []


def test_non_finite_training_loss():
    assert codes(doctor.check_train_loss(train_records([0.7, float("nan")]), CFG)) == ["loss-not-finite"]


def test_overfitting_eval_loss_rising_while_train_loss_falls():
    history = train_records([0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02]) + eval_records([0.5, 0.4, 0.5, 0.65])
    found = doctor.check_overfitting(history, CFG)
    assert codes(found) == ["overfitting"]
    assert "--patience" in found[0].fix and "epoch 2" in found[0].fix


def test_no_overfitting_when_eval_loss_keeps_falling_or_train_loss_rises_too():
    falling = train_records([0.7, 0.5, 0.3, 0.2]) + eval_records([0.5, 0.45, 0.4, 0.38])
    assert doctor.check_overfitting(falling, CFG) == []
    both_rise = train_records([0.3, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]) + eval_records([0.5, 0.4, 0.5, 0.65])
    assert doctor.check_overfitting(both_rise, CFG) == []


def test_train_eval_gap_above_the_limit():
    found = doctor.check_gap({"accuracy": 0.98}, {"accuracy": 0.75}, "accuracy", CFG)
    assert codes(found) == ["generalization-gap"]
    assert "23.0 points" in found[0].message
    assert doctor.check_gap({"accuracy": 0.85}, {"accuracy": 0.8}, "accuracy", CFG) == []
    assert doctor.check_gap({"mse": 0.1}, {"mse": 0.9}, "mse", CFG) == []  # not a 0-1 score


def test_no_memorising_at_chance_level():
    """An STS run with Spearman 0.03 (train) against -0.17 (eval) memorises nothing: neither is above chance."""
    assert doctor.check_gap({"spearman": 0.03}, {"spearman": -0.17}, "spearman", CFG) == []
    # accuracy at the majority share of the training sample is chance too
    majority = {"accuracy": 0.7, "confusion_matrix": [[0, 30], [0, 70]]}
    assert doctor.check_gap(majority, {"accuracy": 0.5}, "accuracy", CFG) == []


def test_advice_fits_the_plan():
    head_only = [phase({"head": 1e-3})]
    assert doctor.train_fewer_parameters(head_only, GROUPS) == ""
    assert "feature-extraction" in doctor.train_fewer_parameters([phase({"layer.1.ffn": 1e-4, "head": 1e-3})],
                                                                 GROUPS)
    watcher = Doctor(CFG, head_only, GROUPS, 10_000, TrainingConfig(), augment="on")
    (gap,) = watcher.finish([], {"accuracy": 0.99}, {"accuracy": 0.7}, "accuracy")
    assert "feature-extraction" not in gap["fix"] and "freeze" not in gap["fix"]
    assert "--augment" not in gap["fix"] and "--dropout 0.3" in gap["fix"]


class _Trainer:
    def __init__(self):
        self.history: list[dict] = []


def test_doctor_warns_live_once_per_code_and_collects_everything(caplog):
    watcher = Doctor(CFG, [phase({**FULL, "head": 1e-3})], GROUPS, 10_000, TrainingConfig())
    trainer = _Trainer()
    with caplog.at_level(logging.WARNING, logger="transferlab"):
        for record in train_records([0.6, 0.62, 0.7, 0.8, 0.9, 1.1, 1.2]):
            trainer.history.append(record)
            watcher.on_record(trainer, record)
    live = [r.getMessage() for r in caplog.records if "train-loss-rising" in r.getMessage()]
    assert len(live) == 1 and "Fix:" in live[0]
    warnings = watcher.finish(trainer.history, {"accuracy": 1.0}, {"accuracy": 0.5}, "accuracy")
    assert [w["code"] for w in warnings] == ["train-loss-rising", "generalization-gap"]
    assert all(set(w) == {"code", "message", "fix"} for w in warnings)


def test_disabled_doctor_says_nothing():
    quiet = Doctor(DoctorConfig(enabled=False), [phase({**FULL, "layer.0.ffn": 1e-3})], GROUPS, 10, TrainingConfig())
    quiet.on_fit_start(_StartingTrainer())
    assert quiet.finish(train_records([0.1, 0.5, 0.9, 2.0]), {"accuracy": 1.0}, {"accuracy": 0.1}, "accuracy") == []


def test_real_run_records_the_warnings_it_triggers(tiny_run):
    """The shared tiny run (one epoch of 200 examples at batch 16) is too short: the doctor says so, with the fix,
    in metrics.json and report.html, and scores a training sample for the gap guard."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    warning = next(w for w in metrics["warnings"] if w["code"] == "too-few-epochs")
    assert "--epochs" in warning["fix"]
    assert metrics["train_subset"]["examples"] == metrics["train_examples"]
    assert 0 <= metrics["train_subset"]["accuracy"] <= 1
    report = (tiny_run / "report.html").read_text()
    assert "too-few-epochs" in report and "Fix:" in report


def test_train_prints_each_warning_with_its_fix(capsys):
    print_warnings([{"code": "overfitting", "message": "The eval loss rose.", "fix": "Stop early (--patience 2)."}])
    out = capsys.readouterr().out
    assert "overfitting" in out and "The eval loss rose." in out and "fix: Stop early (--patience 2)." in out
    print_warnings([])
    assert "no warnings" in capsys.readouterr().out
