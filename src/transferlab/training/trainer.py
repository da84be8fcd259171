"""Executes a Plan on accelerate: phases of AdamW + warmup/decay, eval, early stopping, checkpoints, resume.

The trainer knows nothing of strategy names: a phase only says which groups learn and at what lr.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from transferlab.config import TrainingConfig
from transferlab.models.groups import LayerGroups
from transferlab.precision import autocast_dtype
from transferlab.strategies.plan import ResolvedPhase
from transferlab.tasks.base import Task
from transferlab.training.batching import LengthGroupedBatchSampler
from transferlab.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from transferlab.training.feature_cache import PhaseCache, build_phase_cache
from transferlab.training.monitor import WeightChange

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
    bad_evals: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0
    last_eval_step: int = -1
    last_save_step: int = -1
    optimizer_phase: int = -1
    extra: dict = field(default_factory=dict)


def model_inputs(batch: dict) -> dict:
    """Batch keys starting with '_' are bookkeeping (e.g. example index), not model inputs."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}


class Trainer:
    """Runs resolved phases over a model's layer groups and records a history of train/eval records."""

    def __init__(self, model: torch.nn.Module, task: Task, tokenizer, groups: LayerGroups,
                 phases: list[ResolvedPhase], train_features: list[dict], eval_features: list[dict] | None,
                 config: TrainingConfig, seed: int, run_dir: Path, accelerator: Accelerator,
                 callbacks: tuple[Callable[[dict, Trainer], None], ...] = (), show_progress: bool = True):
        self.model = model
        self.task = task
        self.tokenizer = tokenizer
        self.groups = groups
        self.phases = phases
        self.train_features = train_features
        self.eval_features = eval_features
        self.config = config
        self.seed = seed
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.callbacks = callbacks
        self.show_progress = show_progress and accelerator.is_main_process
        self.metric = config.metric or task.metric
        self.greater_is_better = task.greater_is_better if self.metric != "loss" else False
        self.amp_dtype = autocast_dtype(config.precision, accelerator.device)
        self.state = TrainState()
        self.history: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self._cache: PhaseCache | None = None  # the current phase's frozen-feature cache, if it has one
        self.weight_change: WeightChange | None = None
        self._updates_per_epoch = 1
        self._clock = time.perf_counter()
        self.model.to(accelerator.device)

    # ---- data -------------------------------------------------------------------------------------
    def _collate(self, items: list[dict]) -> dict:
        index = torch.tensor([i for i, _ in items])
        batch = self.task.collate([f for _, f in items], self.tokenizer)
        batch["_index"] = index
        return batch

    def _loader(self, features: list[dict], batch_size: int, shuffle: bool, collate=None) -> DataLoader:
        """Batches of (index, feature) pairs; `collate` (default: tokenized padding) makes the tensors."""
        lengths = [len(f["input_ids"]) for f in features]
        sampler = LengthGroupedBatchSampler(lengths, batch_size, self.seed, shuffle=shuffle,
                                            group_by_length=self.config.group_by_length)
        # a generator of its own: iterating a DataLoader would otherwise draw from the global RNG that dropout
        # uses, so a resumed run (which starts one more iteration) would not replay the same dropout masks
        return DataLoader(list(enumerate(features)), batch_sampler=sampler, collate_fn=collate or self._collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def _cache_batches(self, features: list[dict]):
        """Tokenized batches on this process's device, every example (no sharding: each process caches all)."""
        device = self.accelerator.device
        for batch in self._loader(features, self.config.eval_batch_size, shuffle=False):
            yield {k: v.to(device) for k, v in batch.items()}

    def _start_cache(self, phase: ResolvedPhase) -> None:
        """Build the frozen-feature cache of a phase whose bottom stays frozen, and say so."""
        self._cache = None
        if not self.config.feature_cache:
            return
        lists = [self.train_features] + ([self.eval_features] if self.eval_features else [])
        self._cache, line = build_phase_cache(self.model, self.groups, phase.lrs, lists, self._cache_batches,
                                              self.amp_dtype, self._autocast)
        if not line:
            return
        log.info(line)
        st = self.state
        info = {"phase": st.phase, "cached": self._cache is not None, "message": line}
        st.extra.setdefault("feature_cache", {})[str(st.phase)] = info
        self._record({"kind": "cache", "step": st.global_step, **info})

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
            params = self.groups.groups[group]
            for p in (p for _, p in params):
                p.requires_grad_(True)
            decay = [p for _, p in params if p.ndim > 1]
            no_decay = [p for _, p in params if p.ndim <= 1]
            for ps, wd in ((decay, self.config.weight_decay), (no_decay, 0.0)):
                if ps:
                    param_groups.append({"params": ps, "lr": lr, "weight_decay": wd, "group": group})
        return param_groups

    def _trainable_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _group_grad_norms(self, phase: ResolvedPhase) -> dict[str, float]:
        norms = {}
        for group in phase.lrs:
            grads = [p.grad.detach().float().norm() for _, p in self.groups.groups[group] if p.grad is not None]
            if grads:
                norms[group] = float(torch.stack(grads).norm())
        return norms

    # ---- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, features: list[dict]) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss and task outputs over `features`, in their original order."""
        cached = self._cache.get(features) if self._cache is not None else None
        loader = self.accelerator.prepare_data_loader(
            self._loader(features, self.config.eval_batch_size, shuffle=False,
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
        model.train(was_training)
        order = np.argsort(np.concatenate(indices), kind="stable")
        merged = {k: np.concatenate([o[k] for o in outputs])[order] for k in outputs[0]}
        loss = float(torch.cat(losses).mean()) if losses else float("nan")
        return loss, merged

    def evaluate(self, features: list[dict] | None = None) -> tuple[float, dict]:
        """Eval loss and task metrics on `features` (default: the eval set)."""
        loss, outputs = self.predict(features if features is not None else self.eval_features)
        return loss, self.task.metrics(outputs)

    def _record(self, record: dict) -> None:
        self.history.append(record)
        for callback in self.callbacks:
            callback(record, self)

    def _eval_and_track(self) -> None:
        st = self.state
        loss, metrics = self.evaluate()
        st.last_eval_step = st.global_step
        self._record({"kind": "eval", "step": st.global_step, "epoch": self._epoch_float(), "phase": st.phase,
                      "loss": loss, "metrics": _scalars(metrics)})
        self._record_weight_change()
        value = loss if self.metric == "loss" else metrics.get(self.metric)
        if value is None:
            return
        better = st.best_metric is None or (value > st.best_metric if self.greater_is_better
                                            else value < st.best_metric)
        if better:
            st.best_metric, st.best_step, st.bad_evals = float(value), st.global_step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            st.bad_evals += 1
            if self.config.early_stopping_patience and st.bad_evals >= self.config.early_stopping_patience:
                st.stopped_early = True

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

    def _save(self, optimizer, scheduler) -> None:
        self.accelerator.wait_for_everyone()
        self._tick()
        self.state.last_save_step = self.state.global_step
        if self.accelerator.is_main_process:
            save_checkpoint(self.checkpoint_dir, self.state.global_step, self.model, optimizer, scheduler,
                            asdict(self.state), self.history, self.best_state)
        self.accelerator.wait_for_everyone()

    def _restore(self) -> dict:
        path = latest_checkpoint(self.checkpoint_dir)
        state, blob, self.history, self.best_state = load_checkpoint(path, self.model)
        self.state = TrainState(**state)
        torch.set_rng_state(blob["rng"])
        return blob

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainState:
        """Run every phase of the plan (from the last checkpoint when `resume`); restore the best model."""
        # the starting weights, taken before a resume loads trained ones (the model is built fresh each run)
        self.weight_change = WeightChange(self.groups, {g for p in self.phases for g in p.lrs})
        blob = self._restore() if resume else None
        self._clock = time.perf_counter()
        total = sum(self._phase_steps(p) for p in self.phases)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, disable=not self.show_progress, transient=False) as progress:
            bar = progress.add_task("training", total=total, completed=self.state.global_step, info="")
            while self.state.phase < len(self.phases) and not self.state.stopped_early:
                self._run_phase(blob if blob and blob_phase(self.state) else None, progress, bar)
                blob = None
        self._tick()
        if self.best_state is not None and self.config.restore_best:
            self.model.load_state_dict(self.best_state)
        self.accelerator.free_memory()
        return self.state

    def _phase_steps(self, phase: ResolvedPhase) -> int:
        batches = math.ceil(len(self.train_features) / self.config.batch_size)
        batches = math.ceil(batches / self.accelerator.num_processes)
        return math.ceil(phase.phase.epochs * math.ceil(batches / self.config.grad_accum))

    def _run_phase(self, blob: dict | None, progress: Progress, bar) -> None:
        st, cfg, acc = self.state, self.config, self.accelerator
        phase = self.phases[st.phase]
        optimizer = torch.optim.AdamW(self._set_trainable(phase), lr=max(phase.lrs.values()))
        self._start_cache(phase)
        cached = self._cache.get(self.train_features) if self._cache is not None else None
        loader = self._loader(self.train_features, cfg.batch_size, shuffle=True,
                              collate=cached.collate if cached else None)
        acc.free_memory()
        model, optimizer, loader_p = acc.prepare(self._cache.module if cached else self.model, optimizer, loader)
        self._updates_per_epoch = math.ceil(len(loader_p) / cfg.grad_accum)
        phase_steps = self._phase_steps(phase)
        scheduler = get_scheduler(SCHEDULER_NAMES[phase.phase.schedule], optimizer.optimizer
                                  if hasattr(optimizer, "optimizer") else optimizer,
                                  num_warmup_steps=int(phase.phase.warmup * phase_steps),
                                  num_training_steps=phase_steps)
        if blob is not None:
            optimizer.load_state_dict(blob["optimizer"])
            scheduler.load_state_dict(blob["scheduler"])
        st.optimizer_phase = st.phase
        model.train()
        progress.update(bar, description=f"phase {st.phase + 1}/{len(self.phases)}")
        window: list[float] = []
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
                window.append(float(out.loss.detach()))
                st.samples += len(batch["_index"]) * acc.num_processes
                if not update:
                    continue
                self._optimizer_step(model, optimizer, scheduler, phase, window)
                progress.update(bar, advance=1, info=f"loss {window[-1]:.4f}" if window else "")
                if st.global_step % cfg.log_every == 0:
                    window = []
                if cfg.eval_every and self.eval_features and st.global_step % cfg.eval_every == 0:
                    self._eval_and_track()
                if cfg.save_every and st.global_step % cfg.save_every == 0:
                    self._save(optimizer, scheduler)
                if st.phase_step >= phase_steps or st.stopped_early:
                    break
            else:
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
            if self.eval_features and st.last_eval_step != st.global_step:
                self._eval_and_track()
            if st.step_in_epoch == 0 and st.phase_step < phase_steps and not st.stopped_early:
                self._save(optimizer, scheduler)
        self._record_weight_change()
        self._cache = None
        st.phase, st.epoch, st.step_in_epoch, st.phase_step = st.phase + 1, 0, 0, 0
        self._save(optimizer, scheduler)

    def _record_weight_change(self) -> None:
        """Relative distance of each group from its starting weights (once per step)."""
        st, last = self.state, self.history[-1] if self.history else {}
        if self.weight_change is None or (last.get("kind") == "monitor" and last.get("step") == st.global_step):
            return
        self._record({"kind": "monitor", "step": st.global_step, "phase": st.phase,
                      "weight_change": self.weight_change.measure()})

    def _optimizer_step(self, model, optimizer, scheduler, phase: ResolvedPhase, window: list[float]) -> None:
        st, cfg = self.state, self.config
        log_now = (st.global_step + 1) % cfg.log_every == 0
        group_norms = self._group_grad_norms(phase) if log_now else {}
        if cfg.max_grad_norm:
            grad_norm = self.accelerator.clip_grad_norm_(self._trainable_params(), cfg.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._trainable_params() if p.grad is not None])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        st.global_step += 1
        st.phase_step += 1
        st.step_in_epoch += 1
        if log_now:
            lrs = {g["group"]: g["lr"] for g in optimizer.param_groups}
            self._record({"kind": "train", "step": st.global_step, "epoch": self._epoch_float(), "phase": st.phase,
                          "loss": float(np.mean(window)), "lr": lrs, "grad_norm": float(grad_norm),
                          "grad_norms": group_norms})


def gather_arrays(accelerator: Accelerator, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One batch's task outputs from every process (accelerate gathers tensors, not numpy arrays)."""
    tensors = {k: torch.as_tensor(v, device=accelerator.device) for k, v in arrays.items()}
    return {k: v.cpu().numpy() for k, v in accelerator.gather_for_metrics(tensors).items()}


def blob_phase(state: TrainState) -> bool:
    """A checkpoint's optimizer state belongs to the phase being resumed only if it was saved inside it."""
    return state.optimizer_phase == state.phase


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}
