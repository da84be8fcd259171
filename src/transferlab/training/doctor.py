"""Pitfall guards: warnings, each with its fix, raised while a run trains and collected when it ends.

Static guards read the plan and the data size (learning rate of full fine-tuning, tiny data, too few updates);
trend guards read the history (training loss rising, overfitting); the gap guard compares the metric on a
sample of the training data with the eval metric. Thresholds live in the run config's `doctor` section.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from transferlab.backbones.groups import LayerGroups
from transferlab.config import DoctorConfig, TrainingConfig
from transferlab.evaluation.metrics import HIGHER_IS_BETTER, is_number
from transferlab.strategies.plan import ResolvedPhase
from transferlab.training.events import Callback

log = logging.getLogger("transferlab")


@dataclass(frozen=True)
class Finding:
    """One warning as metrics.json and the report show it."""

    code: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def is_full_finetuning(lrs: dict[str, float], groups: LayerGroups) -> bool:
    """A phase fine-tunes the whole model when the input level (embeddings) and every body level learn."""
    body = [g.name for g in groups.body]
    return bool(groups.inputs) and all(g in lrs for g in groups.inputs) and bool(body) and all(g in lrs for g in body)


def _full_phases(phases: Sequence[ResolvedPhase], groups: LayerGroups) -> list[tuple[int, ResolvedPhase]]:
    return [(i, p) for i, p in enumerate(phases) if is_full_finetuning(p.lrs, groups)]


# ---- static guards: the plan and the data size --------------------------------------------------------
def check_full_lr(phases: Sequence[ResolvedPhase], groups: LayerGroups, cfg: DoctorConfig) -> list[Finding]:
    """Full fine-tuning with a body lr above cfg.max_full_lr overwrites what pretraining learned."""
    found = []
    for i, phase in _full_phases(phases, groups):
        lr = max(v for g, v in phase.lrs.items() if g != "head")
        if lr > cfg.max_full_lr:
            found.append(Finding(
                "lr-too-high-full-finetuning",
                f"Phase {i + 1} fine-tunes the whole model (embeddings and every layer) at lr {lr:g}, above "
                f"{cfg.max_full_lr:g}: updates this large overwrite the pretrained weights (catastrophic "
                "forgetting), and accuracy often collapses to the majority class.",
                "Lower the body lr to 2e-5 - 5e-5 (--lr 3e-5) and keep a higher lr for the head only (--head-lr), "
                "or use a discriminative (llrd) or progressive strategy."))
    return found


def check_small_data(phases: Sequence[ResolvedPhase], groups: LayerGroups, n_train: int,
                     cfg: DoctorConfig) -> list[Finding]:
    """Full fine-tuning on very few examples memorises them instead of adapting."""
    full = _full_phases(phases, groups)
    if not full or n_train >= cfg.small_data:
        return []
    params = full[0][1].trainable_params
    return [Finding(
        "small-data-full-finetuning",
        f"Full fine-tuning updates {params:,} parameters from only {n_train} training examples (fewer than "
        f"{cfg.small_data}): the model can memorise them and forget what it transferred.",
        "Train fewer parameters: --strategy feature-extraction (only the head) or freeze-bottom:4 / "
        "freeze-attention; or add data (or augmentation, the config's augment section).")]


def check_short_training(n_train: int, training: TrainingConfig, phases: Sequence[ResolvedPhase],
                         cfg: DoctorConfig) -> list[Finding]:
    """Too few optimizer updates for the data size: the new head cannot converge."""
    per_epoch = math.ceil(math.ceil(n_train / training.batch_size) / training.grad_accum)
    epochs = sum(p.phase.epochs for p in phases)
    total = sum(math.ceil(per_epoch * p.phase.epochs) for p in phases)
    if total >= cfg.min_updates:
        return []
    needed = math.ceil(cfg.min_updates / per_epoch)
    return [Finding(
        "too-few-epochs",
        f"{n_train} training examples at batch size {training.batch_size} give {per_epoch} optimizer updates per "
        f"epoch, {total} in all over {epochs:g} epochs: fewer than {cfg.min_updates}, too few for the new head "
        "to converge.",
        f"Train for at least {needed} epochs (--epochs {needed}), or use a smaller batch size (--batch-size).")]


# ---- trend guards: the history ------------------------------------------------------------------------
def _finite_losses(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if is_number(r.get("loss")) and math.isfinite(r["loss"])]


def check_train_loss(history: Sequence[dict], cfg: DoctorConfig) -> list[Finding]:
    """Training loss that is not finite, or whose last third is above its first third, within a phase."""
    train = [r for r in history if r.get("kind") == "train"]
    if any(is_number(r.get("loss")) and not math.isfinite(r["loss"]) for r in train):
        return [Finding("loss-not-finite", "The training loss became NaN or infinite: training diverged.",
                        "Lower the lr (--lr), keep gradient clipping on (training.max_grad_norm), "
                        "or train in fp32 (--set training.precision=fp32).")]
    for phase in sorted({r.get("phase", 0) for r in train}):
        losses = [r["loss"] for r in _finite_losses([r for r in train if r.get("phase", 0) == phase])]
        if len(losses) < 4:
            continue
        third = max(1, len(losses) // 3)
        first, last = float(np.mean(losses[:third])), float(np.mean(losses[-third:]))
        if last > first * (1 + cfg.rise_tolerance):
            return [Finding(
                "train-loss-rising",
                f"The training loss rose in phase {phase + 1}, from {first:.4f} (first third) to {last:.4f} "
                "(last third): the optimizer is overshooting.",
                "Lower the lr (--lr) or lengthen the warmup (--set training.warmup=0.1).")]
    return []


def check_overfitting(history: Sequence[dict], cfg: DoctorConfig) -> list[Finding]:
    """Eval loss rising for the last evaluations after its minimum while the training loss keeps falling."""
    evals = _finite_losses([r for r in history if r.get("kind") == "eval"])
    if len(evals) < 3:
        return []
    best = min(range(len(evals)), key=lambda i: evals[i]["loss"])
    low, after = evals[best], evals[best + 1:]
    if len(after) < 2 or min(r["loss"] for r in after) <= low["loss"] \
            or after[-1]["loss"] <= low["loss"] * (1 + cfg.rise_tolerance):
        return []
    train = _finite_losses([r for r in history if r.get("kind") == "train"])
    before = [r["loss"] for r in train if r["step"] <= low["step"]]
    later = [r["loss"] for r in train if r["step"] > low["step"]]
    if not before or not later or np.mean(later) >= np.mean(before):
        return []
    return [Finding(
        "overfitting",
        f"The eval loss rose from {low['loss']:.4f} (step {low['step']}, epoch {low.get('epoch', 0):g}) to "
        f"{after[-1]['loss']:.4f} (step {after[-1]['step']}) while the training loss kept falling "
        f"({np.mean(before):.4f} -> {np.mean(later):.4f}): the model is overfitting.",
        f"Stop early (--patience 2; the best weights are restored), raise dropout (--set model.head_dropout=0.3), "
        f"or train fewer epochs (the eval loss was lowest at epoch {low.get('epoch', 0):g}).")]


# ---- end of run: train vs eval ------------------------------------------------------------------------
def check_gap(train_metrics: dict, eval_metrics: dict, metric: str, cfg: DoctorConfig) -> list[Finding]:
    """A training-set score far above the eval score: memorisation rather than generalisation."""
    if metric not in HIGHER_IS_BETTER or not (is_number(train_metrics.get(metric))
                                              and is_number(eval_metrics.get(metric))):
        return []
    gap = train_metrics[metric] - eval_metrics[metric]
    if gap <= cfg.max_gap:
        return []
    return [Finding(
        "generalization-gap",
        f"Train {metric} {train_metrics[metric]:.3f} is {100 * gap:.1f} points above eval {metric} "
        f"{eval_metrics[metric]:.3f} (limit {100 * cfg.max_gap:.0f}): the model memorises its training data.",
        "Regularise: freeze more layers (--strategy freeze-bottom:4 or feature-extraction), raise weight decay or "
        "dropout, add data or augmentation, or stop earlier (--patience 2).")]


class Doctor(Callback):
    """Runs the guards: static ones when built, trend ones on each history record (as a trainer callback,
    logging each new finding at once), all of them again on the final history in `finish`."""

    order = 40
    main_process_only = True

    def __init__(self, cfg: DoctorConfig, phases: Sequence[ResolvedPhase], groups: LayerGroups,
                 n_train: int, training: TrainingConfig):
        self.cfg = cfg
        self.static = [*check_full_lr(phases, groups, cfg), *check_small_data(phases, groups, n_train, cfg),
                       *check_short_training(n_train, training, phases, cfg)] if cfg.enabled else []
        self._logged: set[str] = set()
        self._announce(self.static)

    def _announce(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            if f.code not in self._logged:
                self._logged.add(f.code)
                log.warning("doctor [%s] %s Fix: %s", f.code, f.message, f.fix)

    def on_record(self, trainer, record: dict) -> None:
        """Check the trends the new record may reveal."""
        if not self.cfg.enabled:
            return
        guard = {"train": check_train_loss, "eval": check_overfitting}.get(record.get("kind"))
        if guard is not None:
            self._announce(guard(trainer.history, self.cfg))

    def finish(self, history: Sequence[dict], train_metrics: dict, eval_metrics: dict,
               metric: str) -> list[dict[str, str]]:
        """Every finding of the run, as metrics.json["warnings"] entries."""
        if not self.cfg.enabled:
            return []
        found = [*self.static, *check_train_loss(history, self.cfg), *check_overfitting(history, self.cfg),
                 *check_gap(train_metrics, eval_metrics, metric, self.cfg)]
        self._announce(found)
        return [f.as_dict() for f in found]
