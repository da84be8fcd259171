"""One straight road from a RunConfig to a trained, evaluated, saved run directory."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed

import transferlab
from transferlab.atomic import atomic_dir, write_text_atomic
from transferlab.backbones import open_backbone
from transferlab.backbones.base import Backbone
from transferlab.backbones.groups import LayerGroups
from transferlab.config import RunConfig, yaml_text
from transferlab.data.augment import augment_texts
from transferlab.data.hf_datasets import default_splits
from transferlab.errors import UserError
from transferlab.evaluation.card import write_card
from transferlab.evaluation.plots import plot_all
from transferlab.evaluation.report import write_report
from transferlab.models.adapters import merge_lora
from transferlab.models.build import randomize_backbone
from transferlab.run_dir import (
    STAGING,
    check_free_space,
    check_no_interrupted_swap,
    check_run_name,
    disk_full_error,
    fresh_staging,
    is_disk_full,
    needed_bytes,
    refuse_existing,
    run_lock,
    set_aside,
    sibling,
    swap_in,
)
from transferlab.strategies.adapters import add_adapters, check_keep_adapters, keep_adapters, needs_adapters
from transferlab.strategies.named import plan_for_config
from transferlab.strategies.plan import ResolvedPhase, check_resolutions
from transferlab.tasks import task_class
from transferlab.tasks.base import RunData, Task
from transferlab.training.baselines import check_baseline, fit_baseline, is_baseline, score
from transferlab.training.checkpoint import last_checkpoint
from transferlab.training.doctor import Doctor
from transferlab.training.trackers import Trackers
from transferlab.training.trainer import Trainer

log = logging.getLogger("transferlab")
SHOWN_AUGMENTED = 3  # augmented examples written to the log beside their originals



def load_run_data(cfg: RunConfig) -> RunData:
    """Load, validate and split the data a config names, as its task reads it (a DatasetDict's own splits first)."""
    train, evaluation = default_splits(cfg.data.train, cfg.data.eval)
    data = cfg.data.model_copy(update={"train": train, "eval": evaluation})
    return task_class(cfg.task).load_data(cfg.model_copy(update={"data": data}))


@dataclass
class PreparedRun:
    """Everything needed to train: model, backbone, task, layer groups and the resolved plan."""

    model: torch.nn.Module
    backbone: Backbone
    task: Task
    groups: LayerGroups
    phases: list[ResolvedPhase]
    data: RunData


def prepare_run(cfg: RunConfig, data: RunData | None = None) -> PreparedRun:
    """Build the task model on the pretrained backbone and compile the strategy into a plan."""
    data = data or load_run_data(cfg)
    backbone = open_backbone(cfg.model.name, cfg.model.max_length)
    task = task_class(cfg.task).for_data(cfg, data, backbone.processor)
    model = task.build_model(backbone, cfg.model)
    if cfg.model.init == "random":
        randomize_backbone(model, task.backbone_prefix)
    groups = add_adapters(cfg, backbone, model, task.layer_groups(model), task.layer_groups)
    phases = plan_for_config(cfg, groups).resolve(groups)
    check_resolutions(phases, cfg.strategy.name, task.name, task.modality)
    check_keep_adapters(cfg, groups, phases)
    return PreparedRun(model, backbone, task, groups, phases, data)


def strategy_groups(cfg: RunConfig, prep: PreparedRun, strategy: str) -> LayerGroups:
    """The layer groups a model built for `strategy` has: `prep`'s, or those of a copy with the adapters the
    strategy adds (what compare and search compile each candidate strategy against)."""
    other = cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"name": strategy})})
    if not needs_adapters(other):
        return prep.groups
    model = copy.deepcopy(prep.model)
    return add_adapters(other, prep.backbone, model, prep.task.layer_groups(model), prep.task.layer_groups)


def augment_train(cfg: RunConfig, task: Task | type[Task], frame: pd.DataFrame) -> pd.DataFrame:
    """The training examples followed by the augmented variants of their text (training split only)."""
    if not cfg.augment.enabled:
        return frame
    if task.modality == "image":
        raise UserError(f"Augmentation is on (config section 'augment', or --augment), which rewords texts, but task "
                        f"'{cfg.task}' reads images.", "Drop --augment and use image augmentation instead: --set "
                        "image.augment.preset=light (see docs/vision.md).")
    if not task.augmentable:
        raise UserError(f"Augmentation is on (config section 'augment') but task '{cfg.task}' labels parts of "
                        "a text (or scores it), which rewording would break.",
                        "Set the augment rates to 0; augmentation works for tasks whose label belongs to the "
                        "whole text (classification).")
    # Row positions stand in for labels, so each variant carries every column of its row (label, text pair...).
    texts, rows = augment_texts(frame["text"].tolist(), list(range(len(frame))), cfg.augment, cfg.seed)
    augmented = frame.iloc[rows].reset_index(drop=True)
    augmented["text"] = texts
    log.info("augmentation: %d training examples -> %d, e.g.:", len(frame), len(augmented))
    for i in range(len(frame), min(len(frame) + SHOWN_AUGMENTED, len(texts))):  # what the model will really read
        log.info("  %r -> %r", frame["text"].iloc[rows[i]], texts[i])
    return augmented


def check_run_dir(cfg: RunConfig, resume: bool, overwrite: bool, accelerator: Accelerator) -> bool:
    """Refuse to silently overwrite an earlier run; True when --overwrite will replace one (once the new one has
    finished: nothing is deleted here)."""
    if resume:
        check_no_interrupted_swap(cfg.run_dir)
        return False
    replace = refuse_existing(cfg.run_dir, overwrite)
    accelerator.wait_for_everyone()  # every process has looked before the main one writes
    return replace


def make_accelerator() -> Accelerator:
    """The accelerate state of this process; several processes without a GPU join as CPU workers (gloo)."""
    # `accelerate launch --multi_gpu --num_processes N` on a CPU-only machine starts N processes, but accelerate
    # only groups them when told to use the CPU; otherwise each would train alone on the same run directory
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=launched and not torch.cuda.is_available())


def locked(cfg: RunConfig, accelerator: Accelerator, resume: bool = False) -> contextlib.AbstractContextManager:
    """The run directory's lock, held by the main process (the others write through it), once the run's name is
    known to stay inside its output directory (checked here, not in the config: old runs keep their names)."""
    check_run_name(cfg.name)
    return run_lock(cfg.run_dir, take_over_dead=resume) if accelerator.is_main_process else contextlib.nullcontext()


@contextlib.contextmanager
def results_dir(cfg: RunConfig, overwrite: bool, resume: bool = False) -> Iterator[Path]:
    """cfg.run_dir, locked, for results written straight into it (compare, search, cross-validation): an old run
    there is set aside as `<name>.previous` (--overwrite) until the new results are complete, restored on failure."""
    accelerator = make_accelerator()
    with locked(cfg, accelerator, resume):
        replace = check_run_dir(cfg, resume, overwrite, accelerator)
        with set_aside(cfg.run_dir, replace and accelerator.is_main_process):
            yield cfg.run_dir


def train_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True,
              on_prepared=None, data: RunData | None = None, callbacks: tuple = (), extra: dict | None = None) -> dict:
    """Train and evaluate one run end to end; write model/, metrics.json, history.jsonl, plots/, report.html.

    Everything is checked (run directory, data, backbone, plan, free disk space) before anything is written; an
    --overwrite trains into `<name>.staging` and replaces the old run only once the new one has finished.
    `data` replaces the examples the config names (k-fold, learning curves); `callbacks` see each history record;
    `extra` joins metrics.json (e.g. how `--strategy auto` chose the plan).
    """
    accelerator = make_accelerator()
    target = cfg.run_dir
    with locked(cfg, accelerator, resume):
        replace = check_run_dir(cfg, resume, overwrite, accelerator)
        set_seed(cfg.seed)
        if is_baseline(cfg.strategy.name):
            def train(work_dir: Path) -> dict:
                return train_baseline_run(cfg, work_dir, accelerator, on_prepared, data, extra)
        else:
            prep = prepare_run(cfg, data)
            check_free_space(target, needed_bytes(*_model_bytes(prep), resumed=resume), f"run '{cfg.name}'")
            if on_prepared is not None and accelerator.is_main_process:
                on_prepared(prep)

            def train(work_dir: Path) -> dict:
                return _train_into(work_dir, cfg, prep, resume, show_progress, callbacks, accelerator, extra)
        work_dir = sibling(target, STAGING) if replace else target
        try:
            if replace and accelerator.is_main_process:
                fresh_staging(target)
            accelerator.wait_for_everyone()
            doc = train(work_dir)
        except OSError as err:
            if not is_disk_full(err):
                raise
            if replace and accelerator.is_main_process:
                shutil.rmtree(work_dir, ignore_errors=True)  # the space goes back; the old run is untouched
            kept = last_checkpoint(work_dir / "checkpoints")
            raise disk_full_error(work_dir, kept, cfg.name, Path(cfg.output_dir), target if replace else None) \
                from err
        if replace and accelerator.is_main_process:
            swap_in(work_dir, target)
        accelerator.wait_for_everyone()
    return doc


def _model_bytes(prep: PreparedRun) -> tuple[int, int]:
    """(bytes of the model's weights, bytes of its most trainable phase's weights in fp32)."""
    total = sum(p.numel() * p.element_size() for p in prep.model.parameters())
    return total, 4 * max((p.trainable_params for p in prep.phases), default=0)


def _train_into(run_dir: Path, cfg: RunConfig, prep: PreparedRun, resume: bool, show_progress: bool,
                callbacks: tuple, accelerator: Accelerator, extra: dict | None = None) -> dict:
    """Train the prepared run, writing its checkpoints and artefacts into `run_dir` (each file atomically)."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml_text(cfg))
    train_frame = augment_train(cfg, prep.task, prep.data.train)
    train_set = prep.task.encoded(train_frame)
    augment = "on" if cfg.augment.enabled else "available" if prep.task.augmentable else "not applicable"
    doctor = Doctor(cfg.doctor, prep.phases, prep.groups, len(prep.data.train), cfg.training, augment,
                    main_process=accelerator.is_main_process)
    eval_set = prep.task.encoded(prep.data.eval)
    if cfg.training.report_to:
        plan = [p.summary(i) for i, p in enumerate(prep.phases)]
        callbacks = (*callbacks, Trackers(cfg.training.report_to, run_dir, cfg.name, cfg.model_dump(mode="json"), plan))
    trainer = Trainer(prep.model, prep.task, prep.groups, prep.phases, train_set, eval_set, cfg.training, cfg.seed,
                      run_dir, accelerator, callbacks=(doctor, *callbacks), show_progress=show_progress)
    state = trainer.train(resume=resume)
    eval_loss, metrics = trainer.evaluate()
    train_scored, train_metrics = score_train_sample(cfg, prep, trainer)
    metrics_doc = {
        "task": prep.task.name, "model": cfg.model.name, "strategy": cfg.strategy.name,
        "plan": [p.summary(i) for i, p in enumerate(prep.phases)],
        "train_examples": len(prep.data.train), "eval_examples": len(prep.data.eval),
        "augmented_train_examples": len(train_frame),
        "labels": prep.data.labels, "eval_loss": eval_loss, "eval": metrics,
        "train_time_s": round(state.train_time_s, 2),
        "train_samples_per_s": round(state.samples / max(state.train_time_s, 1e-9), 2),
        "steps": state.global_step, "best_step": state.best_step, "stopped_early": state.stopped_early,
        "precision": str(trainer.amp_dtype or "fp32").replace("torch.", ""),
        "seed": cfg.seed, "versions": versions(), "hardware": hardware(accelerator), "state": asdict(state),
        "train_subset": {"examples": train_scored,
                         **{k: v for k, v in train_metrics.items() if isinstance(v, int | float)}},
        "warnings": doctor.finish(trainer.history, train_metrics, metrics, trainer.metric),
        **(extra or {}),
    }
    if accelerator.is_main_process:
        if cfg.strategy.keep_adapters:
            with atomic_dir(run_dir / "adapter") as adapter_dir:
                keep_adapters(cfg, prep.backbone, prep.model, prep.groups, adapter_dir)
        with atomic_dir(run_dir / "model") as model_dir:
            save_model(prep, model_dir)
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics_doc, indent=2))
        write_text_atomic(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.history))
        plot_all(run_dir, trainer.history, metrics, prep.data.labels)
        write_report(run_dir)
        write_card(run_dir)
    accelerator.wait_for_everyone()
    return metrics_doc


def train_baseline_run(cfg: RunConfig, run_dir: Path, accelerator: Accelerator, on_prepared=None,
                       data: RunData | None = None, extra: dict | None = None) -> dict:
    """Fit a baseline (tfidf, static-embeddings) in seconds and save it as an ordinary run: model/, metrics.json,
    report, card; its 'plan' is the one fit, so tables and reports show it beside the fine-tuning plans."""
    data = data or load_run_data(cfg)
    backbone = open_backbone(cfg.model.name, cfg.model.max_length)
    task = task_class(cfg.task).for_data(cfg, data, backbone.processor)
    check_baseline(cfg.strategy.name, task)
    train_frame = augment_train(cfg, task, data.train)
    fitted = fit_baseline(cfg.strategy.name, task, backbone, task.encoded(train_frame), cfg.seed)
    if on_prepared is not None and accelerator.is_main_process:
        on_prepared(PreparedRun(fitted.model, backbone, task, None, [fitted.phase], data))
    eval_loss, metrics = score(fitted.model, task, task.encoded(data.eval))
    n = cfg.doctor.train_eval_examples if cfg.doctor.enabled else 0
    sample = data.train if len(data.train) <= n else data.train.sample(n=n, random_state=cfg.seed)
    train_metrics = score(fitted.model, task, task.encoded(sample))[1] if n else {}
    doc = {
        "task": task.name, "model": cfg.model.name, "strategy": cfg.strategy.name, "plan": [fitted.phase.summary(0)],
        "train_examples": len(data.train), "eval_examples": len(data.eval),
        "augmented_train_examples": len(train_frame), "labels": data.labels, "eval_loss": eval_loss, "eval": metrics,
        "train_time_s": round(fitted.fit_time_s, 2),
        "train_samples_per_s": round(len(train_frame) / max(fitted.fit_time_s, 1e-9), 2),
        "steps": 0, "best_step": None, "stopped_early": False, "precision": "fp32", "seed": cfg.seed,
        "versions": versions(), "hardware": hardware(accelerator),
        "train_subset": {"examples": len(sample) if n else 0,
                         **{k: v for k, v in train_metrics.items() if isinstance(v, int | float)}},
        "warnings": [], **(extra or {}),
    }
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", yaml_text(cfg))
        with atomic_dir(run_dir / "model") as model_dir:
            task.save_model(fitted.model, model_dir)
        write_text_atomic(run_dir / "metrics.json", json.dumps(doc, indent=2))
        write_text_atomic(run_dir / "history.jsonl", "")
        plot_all(run_dir, [], metrics, data.labels)
        write_report(run_dir)
        write_card(run_dir)
    accelerator.wait_for_everyone()
    return doc


def score_train_sample(cfg: RunConfig, prep: PreparedRun, trainer: Trainer) -> tuple[int, dict]:
    """(examples, metrics) on a reproducible sample of the unaugmented training data, for the train-eval gap."""
    n = cfg.doctor.train_eval_examples if cfg.doctor.enabled else 0
    if not n:
        return 0, {}
    train = prep.data.train
    sample = train if len(train) <= n else train.sample(n=n, random_state=cfg.seed)
    return len(sample), trainer.evaluate(prep.task.encoded(sample))[1]


def save_model(prep: PreparedRun, model_dir: Path) -> None:
    """The trained model as its task saves it (Hugging Face format and the backbone's processor), LoRA adapters
    merged into the weights they adapt first: an ordinary model, with no adapter cost at inference."""
    merge_lora(prep.model)
    prep.task.save_model(prep.model, model_dir)


def hardware(accelerator: Accelerator) -> dict:
    """What the run trained on (model cards show it): the device, its name, processes, cores and threads."""
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.is_file() else []
        name = models[0] if models else platform.processor() or platform.machine()
    return {"device": device.type, "name": name, "processes": accelerator.num_processes,
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def versions() -> dict[str, str]:
    """Library versions recorded in metrics.json, for reproducibility."""
    return {"transferlab": transferlab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}

