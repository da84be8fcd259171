"""Short training of a derived model (pruned, distilled) on its run's data, with the project's Trainer."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from transferlab.config import RunConfig, build_config
from transferlab.deploy.artifacts import run_config
from transferlab.deploy.predictor import load_saved_task
from transferlab.strategies.named import plan_for_config
from transferlab.tasks import task_class
from transferlab.tasks.base import RunData, Task
from transferlab.training.trainer import Trainer


@dataclass
class RunContext:
    """A run's config, data and task: what training a model for that run needs."""

    cfg: RunConfig
    data: RunData
    task: Task

    def batches(self, frame: pd.DataFrame, batch_size: int) -> list[dict]:
        """Padded tensor batches of a frame's examples (with their targets)."""
        features = self.task.encode(frame)
        return [self.task.collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


def load_context(run_dir: Path, cfg: RunConfig | None = None) -> RunContext:
    """Rebuild a run's data and task from its config.yaml (or `cfg`), exactly as training saw them."""
    from transferlab.pipeline import load_run_data

    cfg = cfg or run_config(run_dir)
    data = load_run_data(cfg)
    processor = load_saved_task(run_dir / "model").processor
    return RunContext(cfg, data, task_class(cfg.task).for_data(cfg, data, processor))


def finetune(model: nn.Module, run_dir: Path, epochs: float, lr: float, learner: nn.Module | None = None,
             show_progress: bool = True) -> dict:
    """Train every group of `learner` (default: `model`) at `lr` for `epochs` on the run's training split.

    `model` is what the Trainer runs: it returns the loss, and may wrap `learner` (distillation). Ends with
    the weights of the best evaluation; returns the eval metrics."""
    doc = run_config(run_dir).model_dump(mode="json")
    doc["strategy"] = {"name": "full", "lr": lr, "head_lr": lr}
    # the derived model has no frozen bottom worth caching, and no checkpoints are kept
    doc["training"].update(epochs=epochs, feature_cache=False, save_every=None, eval_every=None,
                           early_stopping_patience=None)
    cfg = build_config(doc, f"{run_dir / 'config.yaml'} (fine-tuning a derived model)")
    set_seed(cfg.seed)
    ctx = load_context(run_dir, cfg)
    groups = ctx.task.layer_groups(learner or model)
    phases = plan_for_config(cfg, groups).resolve(groups)
    train, evaluation = (ctx.task.encoded(frame) for frame in (ctx.data.train, ctx.data.eval))
    with tempfile.TemporaryDirectory(prefix="transferlab-finetune-") as work:
        trainer = Trainer(model, ctx.task, groups, phases, train, evaluation, cfg.training, cfg.seed, Path(work),
                          Accelerator(), show_progress=show_progress)
        trainer.train()
        _loss, metrics = trainer.evaluate()
    return metrics


def save_derived(model: nn.Module, run_dir: Path, name: str) -> Path:
    """Save a derived model as run_dir/name as its task saves models (with the run's processor)."""
    out = run_dir / name
    if out.exists():
        shutil.rmtree(out)
    load_saved_task(run_dir / "model").save_model(model, out)
    return out
