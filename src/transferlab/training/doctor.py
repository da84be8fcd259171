"""Pitfall guards: warnings, each with its fix, raised while a run trains and collected when it ends.

Static guards read the plan and the data size (learning rate of the pretrained layers, tiny data); when training
starts, the update count the trainer will really make (windows, processes, gradient accumulation); trend guards read
the history (training loss rising, overfitting); at the end, the eval predictions (a collapsed model), where the best
weights came from (a later phase discarded), and the metric on a sample of the training data against the eval
metric. Every fix fits the run (no feature-extraction advice to a feature-extraction run). Thresholds live in the
run config's `doctor` section.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from transferlab.backbones.groups import LayerGroups
from transferlab.config import DoctorConfig, TrainingConfig
from transferlab.evaluation.metrics import HIGHER_IS_BETTER, is_number
from transferlab.strategies.describe import describe_lrs, format_lr
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


# ---- advice that fits the run ---------------------------------------------------------------------------
def _head_only(phases: Sequence[ResolvedPhase]) -> bool:
    return all(set(p.lrs) <= {"head"} for p in phases)


def train_fewer_parameters(phases: Sequence[ResolvedPhase], groups: LayerGroups) -> str:
    """How to train fewer parameters than this plan does ('' when only the head learns already)."""
    if _head_only(phases):
        return ""
    if _full_phases(phases, groups):
        return "freeze more layers (--strategy freeze-bottom:4, freeze-attention or feature-extraction)"
    return "freeze more layers (--strategy feature-extraction trains the head only)"


Augmentation = Literal["available", "on", "not applicable"]  # can a fix suggest --augment to this run?


def more_data(augment: Augmentation) -> str:
    """'add data', with augmentation where the task can use it and the run does not yet (`augment`: 'available',
    'on' or 'not applicable')."""
    return "add data or augmentation (--augment)" if augment == "available" else "add data"


def _regularise(phases: Sequence[ResolvedPhase], groups: LayerGroups, augment: Augmentation) -> str:
    """The regularisation advice that applies to this run, as one sentence."""
    options = [train_fewer_parameters(phases, groups), "raise dropout (--dropout 0.3)", more_data(augment)]
    return "Regularise: " + ", ".join(o for o in options if o) + ", or stop earlier (--patience 2)."


# ---- static guards: the plan and the data size --------------------------------------------------------
def pretrained_lrs(phase: ResolvedPhase, groups: LayerGroups) -> dict[str, float]:
    """The groups of a phase whose weights come from pretraining and their lrs: not a new head, not adapters (new
    weights too), and not bias-only slices (BitFit's 1e-3 on biases is its published recipe: a few thousand
    numbers cannot overwrite what the weight matrices learned)."""
    return {g: lr for g, lr in phase.lrs.items()
            if (groups[g].kind != "head" or not groups.new_head) and groups[g].kind != "adapter"
            and not g.endswith("@bias")}


def check_pretrained_lr(phases: Sequence[ResolvedPhase], groups: LayerGroups, cfg: DoctorConfig) -> list[Finding]:
    """Pretrained layers (all of them or some; a pretrained head such as T5's tied embeddings counts) learning at
    an lr above cfg.max_pretrained_lr: the updates overwrite what pretraining learned."""
    found = []
    for i, phase in enumerate(phases):
        pretrained = pretrained_lrs(phase, groups)
        if not pretrained or max(pretrained.values()) <= cfg.max_pretrained_lr:
            continue
        lr = max(pretrained.values())
        hot = {g: v for g, v in pretrained.items() if v > cfg.max_pretrained_lr}
        share = sum(groups.size(g) for g in hot) / max(groups.total, 1)
        what = "the whole model (embeddings and every layer)" if is_full_finetuning(phase.lrs, groups) else \
            f"pretrained weights ({describe_lrs(hot, groups)}: {100 * share:.1f}% of the parameters)"
        found.append(Finding(
            "lr-too-high",
            f"Phase {i + 1} trains {what} at lr {format_lr(lr)}, above {format_lr(cfg.max_pretrained_lr)}: updates "
            "this large overwrite what pretraining learned (catastrophic forgetting), and the model often collapses "
            "to predicting one class.",
            "Lower the lr of the pretrained layers to 2e-5 - 1e-4 (--lr 5e-5) and keep a higher lr for the new head "
            "only (--head-lr 1e-3), or use a discriminative (llrd) or progressive strategy."))
    return found


def check_small_data(phases: Sequence[ResolvedPhase], groups: LayerGroups, n_train: int,
                     cfg: DoctorConfig, augment: Augmentation = "available") -> list[Finding]:
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
        f"freeze-attention; or {more_data(augment)}.")]


def check_short_training(per_epoch: int, phases: Sequence[ResolvedPhase], cfg: DoctorConfig,
                         what_ran: str) -> list[Finding]:
    """Too few optimizer updates for the new head to converge. `per_epoch` is what the trainer makes per epoch on
    each process (windows, not questions; divided by the processes and the gradient accumulation); `what_ran`
    says how that count came about."""
    epochs = sum(p.phase.epochs for p in phases)
    total = sum(math.ceil(per_epoch * p.phase.epochs) for p in phases)
    if total >= cfg.min_updates:
        return []
    needed = math.ceil(cfg.min_updates / max(per_epoch, 1))
    return [Finding(
        "too-few-epochs",
        f"{what_ran} give {per_epoch} optimizer updates per epoch, {total} in all over {epochs:g} epochs: fewer than "
        f"{cfg.min_updates}, too few for the new head to converge.",
        f"Train for at least {needed} epochs (--epochs {needed}), or use a smaller batch size (--batch-size).")]


def updates_source(n_examples: int, n_features: int, batch_size: int, grad_accum: int, processes: int) -> str:
    """'40 training examples (90 encoded features, e.g. document windows) at batch size 16 on 2 processes': what
    an update count is made of."""
    text = f"{n_examples} training examples"
    if n_features != n_examples:
        text += f" ({n_features} encoded features, e.g. document windows)"
    text += f" at batch size {batch_size}"
    if grad_accum > 1:
        text += f" with {grad_accum} batches per update"
    if processes > 1:
        text += f" on {processes} processes"
    return text


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
        f"Stop early (--patience 2; the best weights are restored), raise dropout (--dropout 0.3), "
        f"or train fewer epochs (the eval loss was lowest at epoch {low.get('epoch', 0):g}).")]


# ---- end of run: the eval predictions, the restored weights, train vs eval ---------------------------------
def chance_level(metric: str, metrics: dict) -> float:
    """The score of a model that learned nothing: the majority share for accuracy (from the confusion matrix),
    0.5 for ROC-AUC, 0 for correlations and the other scores."""
    if metric == "roc_auc":
        return 0.5
    matrix = metrics.get("confusion_matrix")
    if metric == "accuracy" and matrix:
        rows = np.asarray(matrix).sum(axis=1)
        return float(rows.max() / max(rows.sum(), 1))
    return 0.0


def check_gap(train_metrics: dict, eval_metrics: dict, metric: str, cfg: DoctorConfig, fix: str = "") -> list[Finding]:
    """A training-set score far above the eval score: memorisation rather than generalisation. A training score at
    chance level is no memorisation, whatever the eval score."""
    if metric not in HIGHER_IS_BETTER or not (is_number(train_metrics.get(metric))
                                              and is_number(eval_metrics.get(metric))):
        return []
    gap = train_metrics[metric] - eval_metrics[metric]
    chance = chance_level(metric, train_metrics)
    if gap <= cfg.max_gap or train_metrics[metric] <= chance + cfg.chance_margin:
        return []
    return [Finding(
        "generalization-gap",
        f"Train {metric} {train_metrics[metric]:.3f} is {100 * gap:.1f} points above eval {metric} "
        f"{eval_metrics[metric]:.3f} (limit {100 * cfg.max_gap:.0f}): the model memorises its training data.",
        fix or "Regularise: raise dropout (--dropout 0.3), add data, or stop earlier (--patience 2).")]


def check_collapse(eval_metrics: dict, cfg: DoctorConfig) -> list[Finding]:
    """Nearly every eval prediction in one class although the eval data has others: the model collapsed to a
    constant answer (its ROC-AUC, where there is one, near 0.5 says its scores do not rank either)."""
    matrix = eval_metrics.get("confusion_matrix")
    names = list(eval_metrics.get("per_class") or {})
    if not matrix or len(matrix) < 2:
        return []
    counts = np.asarray(matrix, dtype=float)
    predicted, true = counts.sum(axis=0), counts.sum(axis=1)
    top = int(predicted.argmax())
    share, true_share = predicted[top] / predicted.sum(), true[top] / true.sum()
    if share < cfg.collapse_share or true_share > cfg.collapse_share:
        return []
    label = names[top] if len(names) == len(matrix) else str(top)
    auc = eval_metrics.get("roc_auc")
    ranking = f"; ROC-AUC {auc:.2f}, so its scores do not rank the examples either" if is_number(auc) and \
        abs(auc - 0.5) < 0.1 else ""
    return [Finding(
        "collapsed-model",
        f"The model predicts {label!r} for {100 * share:.0f}% of the eval examples, where only {100 * true_share:.0f}% "
        f"are {label!r}: it collapsed to a constant answer and learned nothing about the input{ranking}.",
        "The usual cause is an lr too high for the pretrained layers: train again with --lr 3e-5 --head-lr 1e-3 "
        "(or a strategy's own default lr); also check that the labels fit the texts and that the classes are not "
        "too unbalanced.")]


def check_restored_phase(state, phases: Sequence[ResolvedPhase], ran: int, metric: str,
                         restore_best: bool) -> list[Finding]:
    """Restoring the best weights of an earlier phase discards what the later phases of the plan learned."""
    if not restore_best or state.best_phase is None or state.best_phase >= ran:
        return []
    best, later = state.best_phase, range(state.best_phase + 1, ran + 1)
    named = ", ".join(f"{i + 1} ({phases[i].phase.name})" for i in later)
    return [Finding(
        "best-weights-from-earlier-phase",
        f"The best evaluation ({metric} {state.best_metric:.4f} at step {state.best_step}) came in phase {best + 1} "
        f"({phases[best].phase.name}) of {len(phases)}; the weights restored at the end are those, so what phase"
        f"{'s' if len(later) > 1 else ''} {named} learned is discarded: the saved model is the phase {best + 1} "
        "model.",
        "If the later phases should count, give them more epochs or a lower lr (strategy.phase_lrs), evaluate more "
        "often (--eval-every), or keep the last weights (--set training.restore_best=false).")]


class Doctor(Callback):
    """Runs the guards: plan guards when built, the update count when training starts, trend guards on each history
    record, the end-of-run guards in `finish`. Only the main process logs, so each warning is printed once however
    many processes train."""

    order = 40  # after BestWeights (10): on_fit_end sees the weights it restored
    main_process_only = True

    def __init__(self, cfg: DoctorConfig, phases: Sequence[ResolvedPhase], groups: LayerGroups,
                 n_train: int, training: TrainingConfig, augment: Augmentation = "available",
                 main_process: bool = True):
        """`augment`: whether the run could add augmentation to its fixes ('available'), already augments ('on'),
        or its task cannot use it ('not applicable')."""
        self.cfg = cfg
        self.phases, self.groups, self.training, self.augment = phases, groups, training, augment
        self.static = [*check_pretrained_lr(phases, groups, cfg),
                       *check_small_data(phases, groups, n_train, cfg, augment)] if cfg.enabled else []
        self.found: list[Finding] = []
        self._logged: set[str] = set()
        self._main = main_process

    def _announce(self, findings: Sequence[Finding]) -> None:
        for f in findings:
            if f.code not in self._logged:
                self._logged.add(f.code)
                if self._main:
                    log.warning("doctor [%s] %s Fix: %s", f.code, f.message, f.fix)

    def on_fit_start(self, trainer) -> None:
        """Announce the plan guards, and count the updates the trainer will really make."""
        if not self.cfg.enabled:
            return
        what = updates_source(len(trainer.train_set.frame), len(trainer.train_set.features), self.training.batch_size,
                              self.training.grad_accum, trainer.accelerator.num_processes)
        self.found = check_short_training(trainer.updates_per_epoch(), self.phases, self.cfg, what)
        self._announce([*self.static, *self.found])

    def on_record(self, trainer, record: dict) -> None:
        """Check the trends the new record may reveal."""
        if not self.cfg.enabled:
            return
        guard = {"train": check_train_loss, "eval": check_overfitting}.get(record.get("kind"))
        if guard is not None:
            self._announce(guard(trainer.history, self.cfg))

    def on_fit_end(self, trainer) -> None:
        """Say at once when the restored best weights discard later phases."""
        if not self.cfg.enabled:
            return
        ran = max((r["phase"] for r in trainer.history if r.get("kind") in ("train", "eval")), default=0)
        restored = check_restored_phase(trainer.state, self.phases, ran, trainer.metric,
                                        trainer.config.restore_best and trainer.best_state is not None)
        self.found += restored
        self._announce(restored)

    def finish(self, history: Sequence[dict], train_metrics: dict, eval_metrics: dict,
               metric: str) -> list[dict[str, str]]:
        """Every finding of the run, as metrics.json["warnings"] entries."""
        if not self.cfg.enabled:
            return []
        fix = _regularise(self.phases, self.groups, self.augment)
        found = [*self.static, *self.found, *check_train_loss(history, self.cfg),
                 *check_overfitting(history, self.cfg), *check_collapse(eval_metrics, self.cfg),
                 *check_gap(train_metrics, eval_metrics, metric, self.cfg, fix)]
        self._announce(found)
        return [f.as_dict() for f in found]
