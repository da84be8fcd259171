"""One straight road from a RunConfig to a trained, evaluated, saved run directory."""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed

import transferlab
from transferlab.config import RunConfig, save_yaml
from transferlab.errors import UserError
from transferlab.evaluation.plots import plot_all
from transferlab.evaluation.report import write_report
from transferlab.models.backbone import load_tokenizer, resolve_model_dir
from transferlab.models.groups import LayerGroups, layer_groups
from transferlab.strategies.named import StrategyOptions, build_plan
from transferlab.strategies.plan import ResolvedPhase
from transferlab.tasks import task_class
from transferlab.tasks.base import RunData, Task
from transferlab.training.trainer import Trainer

log = logging.getLogger("transferlab")


def load_run_data(cfg: RunConfig) -> RunData:
    """Load, validate and split the data a config names, as its task reads it."""
    return task_class(cfg.task).load_data(cfg)


@dataclass
class PreparedRun:
    """Everything needed to train: model, tokenizer, task, layer groups and the resolved plan."""

    model: torch.nn.Module
    tokenizer: object
    task: Task
    groups: LayerGroups
    phases: list[ResolvedPhase]
    data: RunData


def prepare_run(cfg: RunConfig, data: RunData | None = None) -> PreparedRun:
    """Build the task model on the pretrained backbone and compile the strategy into a plan."""
    data = data or load_run_data(cfg)
    model_dir = resolve_model_dir(cfg.model.name)
    tokenizer = load_tokenizer(model_dir)
    task = task_class(cfg.task).for_data(cfg, data)
    model = task.build_model(model_dir, cfg.model)
    groups = layer_groups(model)
    t, s = cfg.training, cfg.strategy
    opts = StrategyOptions(lr=s.lr, head_lr=s.head_lr, epochs=t.epochs, warmup=t.warmup, schedule=t.schedule)
    phases = build_plan(s.name, groups, opts).resolve(groups)
    return PreparedRun(model, tokenizer, task, groups, phases, data)


def check_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Refuse to silently overwrite an earlier run: never lose work."""
    run_dir = cfg.run_dir
    if resume:
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(f"Run directory '{run_dir}' already holds a run.",
                            "Pass --resume to continue it, --overwrite to replace it, or choose another --name.")
        shutil.rmtree(run_dir)
    return run_dir


def train_run(cfg: RunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True,
              on_prepared=None) -> dict:
    """Train and evaluate one run end to end; write model/, metrics.json, history.jsonl, plots/, report.html."""
    accelerator = Accelerator()
    run_dir = check_run_dir(cfg, resume, overwrite)
    set_seed(cfg.seed)
    prep = prepare_run(cfg)
    if on_prepared is not None and accelerator.is_main_process:
        on_prepared(prep)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
    max_length = cfg.model.max_length
    train_features = prep.task.encode(prep.data.train, prep.tokenizer, max_length)
    eval_features = prep.task.encode(prep.data.eval, prep.tokenizer, max_length)
    trainer = Trainer(prep.model, prep.task, prep.tokenizer, prep.groups, prep.phases, train_features,
                      eval_features, cfg.training, cfg.seed, run_dir, accelerator, show_progress=show_progress)
    state = trainer.train(resume=resume)
    eval_loss, metrics = trainer.evaluate()
    metrics_doc = {
        "task": prep.task.name, "model": cfg.model.name, "strategy": cfg.strategy.name,
        "plan": [p.summary(i) for i, p in enumerate(prep.phases)],
        "train_examples": len(prep.data.train), "eval_examples": len(prep.data.eval),
        "labels": prep.data.labels, "eval_loss": eval_loss, "eval": metrics,
        "train_time_s": round(state.train_time_s, 2),
        "train_samples_per_s": round(state.samples / max(state.train_time_s, 1e-9), 2),
        "steps": state.global_step, "best_step": state.best_step, "stopped_early": state.stopped_early,
        "precision": str(trainer.amp_dtype or "fp32").replace("torch.", ""),
        "seed": cfg.seed, "versions": versions(), "state": asdict(state),
    }
    if accelerator.is_main_process:
        save_model(prep, run_dir / "model")
        (run_dir / "metrics.json").write_text(json.dumps(metrics_doc, indent=2))
        (run_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
        plot_all(run_dir, trainer.history, metrics, prep.data.labels)
        write_report(run_dir)
    accelerator.wait_for_everyone()
    return metrics_doc


def save_model(prep: PreparedRun, model_dir: Path) -> None:
    """Hugging Face format (+ the head's code, registered for the Auto classes) and the tokenizer."""
    prep.model.save_pretrained(model_dir)
    prep.tokenizer.save_pretrained(model_dir)


def versions() -> dict[str, str]:
    """Library versions recorded in metrics.json, for reproducibility."""
    return {"transferlab": transferlab.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}

