"""Executes a Plan on accelerate: phases of AdamW + warmup/decay, evaluation, and events for everything else.

The trainer knows nothing of strategy names (a phase only says which groups learn and at what lr) nor of tasks
(it asks the task to collate, measure and score). Best weights, early stopping, monitors, progress and
checkpoints are callbacks (training/callbacks.py) on the trainer's events (training/events.py).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import get_scheduler

from transferlab.backbones.groups import LayerGroups
from transferlab.config import TrainingConfig
from transferlab.precision import autocast_dtype
from transferlab.strategies.plan import ResolvedPhase
from transferlab.tasks.base import Encoded, Task, TrainingDraw, concat_outputs
from transferlab.training.allocator import keep_freed_memory
from transferlab.training.batch_norm import learning_batch_norms, recalibrate, sample_indices
from transferlab.training.batching import LengthGroupedBatchSampler
from transferlab.training.callbacks import (
    BestWeights,
    Checkpointer,
    EarlyStopping,
    History,
    LossAtEvaluation,
    ProgressBar,
    WeightChangeMonitor,
)
from transferlab.training.checkpoint import latest_checkpoint, load_checkpoint, restore_loop_state, save_checkpoint
from transferlab.training.events import Callback, Callbacks
from transferlab.training.fast_dropout import FastCpuTraining
from transferlab.training.feature_cache import PhaseCache, build_phase_cache, cache_point
from transferlab.training.fp32_depthwise import Fp32Depthwise

log = logging.getLogger("transferlab")

SCHEDULER_NAMES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass
class TrainState:
    """Where training stands; enough, with the checkpointed tensors, to resume bit for bit."""

    phase: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    phase_step: int = 0
    global_step: int = 0
    samples: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_phase: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0
    last_eval_step: int = -1
    last_save_step: int = -1
    optimizer_phase: int = -1
    loss_window: list[float] = field(default_factory=list)  # training losses since the last train record
    extra: dict = field(default_factory=dict)


def model_inputs(batch: dict) -> dict:
    """Batch keys starting with '_' are bookkeeping (e.g. example index), not model inputs."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}


class Trainer:
    """Runs resolved phases over a model's layer groups and records a history of train/eval records."""

    def __init__(self, model: torch.nn.Module, task: Task, groups: LayerGroups, phases: list[ResolvedPhase],
                 train: Encoded, eval: Encoded | None, config: TrainingConfig, seed: int, run_dir: Path,
                 accelerator: Accelerator, callbacks: Iterable[Callback | Callable] = (), show_progress: bool = True):
        self.model = model
        self.task = task
        self.groups = groups
        self.phases = phases
        self.train_set = train
        self.eval_set = eval if eval is not None and len(eval) else None
        self.config = config
        self.seed = seed
        self.run_dir = run_dir
        self.accelerator = accelerator
        builtin = [History(), LossAtEvaluation(), BestWeights(), EarlyStopping(), WeightChangeMonitor(),
                   Checkpointer(), ProgressBar(show_progress)]
        builtin += [FastCpuTraining(), Fp32Depthwise()] if config.fast_cpu_training else []
        self.callbacks = Callbacks([*builtin, *callbacks], accelerator.is_main_process)
        self.metric = config.metric or task.metric
        self.eval_batch_size = config.eval_batch_size or task.eval_batch_size
        self.greater_is_better = task.greater_is_better if self.metric != "loss" else False
        self.amp_dtype = autocast_dtype(config.precision, accelerator.device)
        self.state = TrainState()
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.optimizer = self.scheduler = None  # the running phase's
        self._cache: PhaseCache | None = None  # the running phase's frozen-feature cache, if it has one
        self._resume_from: Path | None = None
        self._updates_per_epoch = 1
        self.last_grad_norm: torch.Tensor | float = float("nan")  # of the last optimizer update
        self.last_lrs: dict[str, float] = {}  # the lr of each group in the last optimizer update
        self._clock = time.perf_counter()
        self.model.to(accelerator.device)

    # ---- what callbacks read -----------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return sum(self.phase_steps(i) for i in range(len(self.phases)))

    @property
    def last_loss(self) -> float | None:
        return self.state.loss_window[-1] if self.state.loss_window else None

    def updates_per_epoch(self) -> int:
        """Optimizer updates per epoch: this process's share of the batches of features, per gradient accumulation."""
        batches = math.ceil(len(self.train_set.features) / self.config.batch_size)
        batches = math.ceil(batches / self.accelerator.num_processes)
        return math.ceil(batches / self.config.grad_accum)

    def phase_steps(self, index: int) -> int:
        """Optimizer updates of phase `index` (its epochs over this process's share of the batches)."""
        return math.ceil(self.phases[index].phase.epochs * self.updates_per_epoch())

    def record(self, record: dict) -> None:
        """Announce a history record (the History callback keeps it)."""
        self.callbacks.emit("on_record", self, record)

    def emit(self, event: str, *payload) -> None:
        self.callbacks.emit(event, self, *payload)

    # ---- data -------------------------------------------------------------------------------------
    def _collate(self, items: list[tuple[int, dict]], phase: ResolvedPhase | None = None) -> dict:
        """A batch of (index, feature) pairs; with a `phase`, a training batch of that phase (augmented where the task
        augments, at the phase's resolution), drawn from the epoch running when the loader asks for it."""
        features, indices = [f for _, f in items], [i for i, _ in items]
        if phase is None:
            batch = self.task.collate(features)
        else:
            draw = TrainingDraw(self.seed, self.state.phase, self.state.epoch, phase.phase.resolution)
            batch = self.task.collate_train(features, indices, draw)
        batch["_index"] = torch.tensor(indices)
        return batch

    def _loader(self, features: list[dict], batch_size: int, shuffle: bool, collate=None) -> DataLoader:
        """Batches of (index, feature) pairs; `collate` (default: the task's) makes the tensors."""
        lengths = [self.task.length(f) for f in features]
        sampler = LengthGroupedBatchSampler(lengths, batch_size, self.seed, shuffle=shuffle,
                                            group_by_length=self.config.group_by_length)
        # a generator of its own: iterating a DataLoader would otherwise draw from the global RNG that dropout
        # uses, so a resumed run (which starts one more iteration) would not replay the same dropout masks
        return DataLoader(list(enumerate(features)), batch_sampler=sampler, collate_fn=collate or self._collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def _cache_batches(self, features: list[dict], phase: ResolvedPhase | None = None):
        """Encoded batches on this process's device, every example (no sharding: each process caches all); with a
        `phase`, the training examples as it trains on them (its resolution), the others as evaluation reads them."""
        device = self.accelerator.device
        training = phase is not None and features is self.train_set.features
        collate = partial(self._collate, phase=phase) if training else None
        for batch in self._loader(features, self.eval_batch_size, shuffle=False, collate=collate):
            yield {k: v.to(device) for k, v in batch.items()}

    def _start_cache(self, phase: ResolvedPhase) -> None:
        """Build the frozen-feature cache of a phase whose bottom stays frozen, and say so. Training batches that
        change every epoch (augmentation) cannot come from a cache: then only the eval examples are cached."""
        self._cache = None
        if not self.config.feature_cache:
            return
        variation = self.task.training_variation()
        lists = ([] if variation else [self.train_set.features]) + ([self.eval_set.features] if self.eval_set else [])
        self._cache, line = build_phase_cache(self.model, self.groups, phase.lrs, lists,
                                              partial(self._cache_batches, phase=phase), self.amp_dtype,
                                              self._autocast) if lists else (None, "")
        if variation and cache_point(self.model, self.groups, phase.lrs) is not None:
            line = (f"frozen-feature cache: off for training, since {variation} every epoch; the frozen bottom "
                    "runs on every training batch" + ("" if self._cache is None else "; the eval examples are cached"))
        elif line and phase.phase.resolution and self._cache is not None:
            line += f" (training images at {phase.phase.resolution} px, evaluation at the run's resolution)"
        if not line:
            return
        log.info(line)
        st = self.state
        info = {"phase": st.phase, "cached": self._cache is not None and not variation, "message": line}
        st.extra.setdefault("feature_cache", {})[str(st.phase)] = info
        self.record({"kind": "cache", "step": st.global_step, **info})

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=self.amp_dtype)

    # ---- optimisation -----------------------------------------------------------------------------
    def _set_trainable(self, phase: ResolvedPhase) -> list[dict]:
        """Freeze everything outside the phase; return AdamW param groups (no decay on biases/norms)."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        param_groups = []
        for group, lr in phase.lrs.items():
            params = self.groups[group].params
            for _, p in params:
                p.requires_grad_(True)
            decay = [p for _, p in params if p.ndim > 1]
            no_decay = [p for _, p in params if p.ndim <= 1]
            for ps, wd in ((decay, self.config.weight_decay), (no_decay, 0.0)):
                if ps:
                    param_groups.append({"params": ps, "lr": lr, "weight_decay": wd, "group": group})
        return param_groups

    def _train_mode(self, module: torch.nn.Module) -> None:
        """Training mode, except for normalisation layers whose weights are frozen: their running statistics
        (BatchNorm) stay those of pretraining, as freezing them means."""
        module.train()
        for sub in module.modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and \
                    not any(p.requires_grad for p in sub.parameters()):
                sub.eval()

    def _trainable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _group_grad_norms(self, phase: ResolvedPhase) -> dict[str, float]:
        norms = {}
        for group in phase.lrs:
            grads = [p.grad.detach().float().norm() for _, p in self.groups[group].params if p.grad is not None]
            if grads:
                norms[group] = float(torch.stack(grads).norm())
        return norms

    # ---- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, features: list[dict]) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss and task outputs over `features`, in their original order."""
        cached = self._cache.get(features) if self._cache is not None else None
        loader = self.accelerator.prepare_data_loader(
            self._loader(features, self.eval_batch_size, shuffle=False,
                         collate=cached.collate if cached else None))
        model = self._cache.module if cached is not None else self.model
        was_training = model.training
        model.eval()
        losses, outputs, indices = [], [], []
        for batch in loader:
            with self._autocast():
                out = self.task.eval_forward(model, model_inputs(batch))
            n = len(batch["_index"])
            if out.loss is not None:
                losses.append(self.accelerator.gather_for_metrics(out.loss.detach().float().repeat(n)))
            outputs.append(gather_arrays(self.accelerator, self.task.outputs(out, batch)))
            indices.append(self.accelerator.gather_for_metrics(batch["_index"]).cpu().numpy())
        if was_training:
            self._train_mode(model)
        order = np.argsort(np.concatenate(indices), kind="stable")
        merged = {k: v[order] for k, v in concat_outputs(outputs).items()}
        loss = float(torch.cat(losses).mean()) if losses else float("nan")
        return loss, merged

    def evaluate(self, encoded: Encoded | None = None) -> tuple[float, dict]:
        """Eval loss and task metrics on `encoded` examples (default: the eval set)."""
        encoded = encoded or self.eval_set
        loss, outputs = self.predict(encoded.features)
        return loss, self.task.metrics(outputs, encoded.frame)

    def _recalibrate_batch_norm(self) -> None:
        """Batch-norm statistics of the layers that learn, re-estimated with the current weights on a fixed sample
        of training examples (`training.bn_recalibration`; training/batch_norm.py says why)."""
        cached = self._cache.get(self.train_set.features) if self._cache is not None else None
        module = self._cache.module if cached is not None else self.model
        if not self.config.bn_recalibration or not learning_batch_norms(module):
            return
        features, device = self.train_set.features, self.accelerator.device
        chosen = sample_indices(len(features), self.config.bn_recalibration, self.seed)
        loader = DataLoader([(i, features[i]) for i in chosen], batch_size=self.eval_batch_size,
                            collate_fn=cached.collate if cached is not None else self._collate)

        def forward(batch: dict) -> None:
            with self._autocast():
                module(**model_inputs({k: v.to(device) for k, v in batch.items()}))

        recalibrate(module, loader, forward)

    def _evaluate_and_announce(self) -> None:
        st = self.state
        self._recalibrate_batch_norm()
        loss, metrics = self.evaluate()
        st.last_eval_step = st.global_step
        record = {"kind": "eval", "step": st.global_step, "epoch": self._epoch_float(), "phase": st.phase,
                  "loss": loss, "metrics": _scalars(metrics)}
        self.record(record)
        self.emit("on_evaluate", record)

    def _epoch_float(self) -> float:
        return round(self.state.epoch + self.state.step_in_epoch / max(self._updates_per_epoch, 1), 4)

    # ---- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _tick(self) -> None:
        now = time.perf_counter()
        self.state.train_time_s += now - self._clock
        self._clock = now

    def save_checkpoint(self) -> None:
        """Save everything a resume needs (called by the Checkpointer callback, on every process)."""
        self.accelerator.wait_for_everyone()
        self._tick()
        self.state.last_save_step = self.state.global_step
        path = save_checkpoint(self.accelerator, self.checkpoint_dir, self.state.global_step, self.model,
                               self.optimizer, self.scheduler, asdict(self.state), self.history, self.best_state)
        self.emit("on_checkpoint", path)

    def _restore(self) -> None:
        self._resume_from = latest_checkpoint(self.checkpoint_dir)
        state, self.history, self.best_state = load_checkpoint(self._resume_from, self.model)
        self.state = TrainState(**state)

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainState:
        """Run every phase of the plan (from the last checkpoint when `resume`); end with the best model."""
        try:
            self.emit("on_fit_start")
            if self.config.keep_freed_memory:
                keep_freed_memory()
            if resume:
                self._restore()
            self._clock = time.perf_counter()
            while self.state.phase < len(self.phases) and not self.state.stopped_early:
                self._run_phase()
            self._tick()
            self.emit("on_fit_end")
        except BaseException:
            self.emit("on_fit_abort")
            raise
        self.accelerator.free_memory()
        return self.state

    def _run_phase(self) -> None:
        st, cfg, acc = self.state, self.config, self.accelerator
        phase = self.phases[st.phase]
        # fused: one pass over all parameters, not a dozen per tensor (full fine-tuning of MiniLM: +14% samples/s);
        # the same update to rounding, and a resumed run still matches the uninterrupted one (test_resume)
        optimizer = torch.optim.AdamW(self._set_trainable(phase), lr=max(phase.lrs.values()), fused=True)
        self._start_cache(phase)
        cached = self._cache.get(self.train_set.features) if self._cache is not None else None
        loader = self._loader(self.train_set.features, cfg.batch_size, shuffle=True,
                              collate=cached.collate if cached else partial(self._collate, phase=phase))
        acc.free_memory()
        model, self.optimizer, loader_p = acc.prepare(self._cache.module if cached else self.model, optimizer, loader)
        self._updates_per_epoch = math.ceil(len(loader_p) / cfg.grad_accum)
        phase_steps = self.phase_steps(st.phase)
        self.scheduler = get_scheduler(SCHEDULER_NAMES[phase.phase.schedule], optimizer,
                                       num_warmup_steps=int(phase.phase.warmup * phase_steps),
                                       num_training_steps=phase_steps)
        if self._resume_from is not None:
            # the optimizer and schedule belong to the resumed phase only if the checkpoint was saved inside it
            inside = st.optimizer_phase == st.phase
            restore_loop_state(acc, self._resume_from, self.optimizer if inside else None,
                               self.scheduler if inside else None)
            self._resume_from = None
        st.optimizer_phase = st.phase
        self._train_mode(model)
        self.emit("on_phase_start", st.phase)
        while st.phase_step < phase_steps and not st.stopped_early:
            loader.batch_sampler.use_epoch(st.phase * 10_000 + st.epoch)
            skip = st.step_in_epoch * cfg.grad_accum
            batches = acc.skip_first_batches(loader_p, skip) if skip else loader_p
            micro = skip
            for batch in batches:
                micro += 1
                update = micro % cfg.grad_accum == 0 or micro == len(loader_p)
                with nullcontext() if update else acc.no_sync(model):
                    with self._autocast():
                        out = model(**model_inputs(batch))
                    acc.backward(out.loss / cfg.grad_accum)
                st.loss_window.append(float(out.loss.detach()))
                st.samples += len(batch["_index"]) * acc.num_processes
                if not update:
                    continue
                record = self._optimizer_step(model, phase)
                if cfg.eval_every and self.eval_set and st.global_step % cfg.eval_every == 0:
                    self._evaluate_and_announce()
                self.emit("on_step_end", record)
                if st.phase_step >= phase_steps or st.stopped_early:
                    break
            else:
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
            if self.eval_set and st.last_eval_step != st.global_step:
                self._evaluate_and_announce()
            self.emit("on_epoch_end")
        if not self.eval_set:
            self._recalibrate_batch_norm()
        self._cache = None
        finished = st.phase
        st.phase, st.epoch, st.step_in_epoch, st.phase_step = st.phase + 1, 0, 0, 0
        self.emit("on_phase_end", finished)

    def _optimizer_step(self, model, phase: ResolvedPhase) -> dict | None:
        """One update; returns the train record when this step logs one (every `log_every` steps)."""
        st, cfg = self.state, self.config
        log_now = (st.global_step + 1) % cfg.log_every == 0
        group_norms = self._group_grad_norms(phase) if log_now else {}
        if cfg.max_grad_norm:
            grad_norm = self.accelerator.clip_grad_norm_(self._trainable_params(), cfg.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._trainable_params() if p.grad is not None])
        self.optimizer.step()
        self.last_lrs = {g["group"]: g["lr"] for g in self.optimizer.param_groups}  # what this update used
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.global_step += 1
        st.phase_step += 1
        st.step_in_epoch += 1
        self.last_grad_norm = grad_norm
        return self.log_train(group_norms) if log_now else None

    def log_train(self, group_norms: dict[str, float] | None = None) -> dict | None:
        """Record the mean training loss since the last train record, the lrs and gradient norm of the last update
        (the norm per group when given); None when no update ran since."""
        st = self.state
        if not st.loss_window or not self.last_lrs:
            return None
        record = {"kind": "train", "step": st.global_step, "epoch": self._epoch_float(), "phase": st.phase,
                  "loss": float(np.mean(st.loss_window)), "lr": self.last_lrs, "grad_norm": float(self.last_grad_norm),
                  "grad_norms": group_norms or {}}
        st.loss_window = []
        self.record(record)
        return record


def gather_arrays(accelerator: Accelerator, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch's task outputs from every process (accelerate gathers tensors, not numpy arrays; per-position
    outputs are padded across processes to one width first)."""
    if accelerator.num_processes == 1:
        return arrays
    gathered = {}
    for key, value in arrays.items():
        tensor = torch.as_tensor(value, device=accelerator.device)
        if tensor.dim() > 1:
            tensor = accelerator.pad_across_processes(tensor, dim=1, pad_index=-100 if not tensor.is_floating_point()
                                                      else 0)
        gathered[key] = accelerator.gather_for_metrics(tensor).cpu().numpy()
    return gathered


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
