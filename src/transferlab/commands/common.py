"""What every command module shares: the console, config resolution from file + flags + --set, the doctor's
warnings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from transferlab.config import DEFAULT_AUGMENT, AugmentConfig, RunConfig, apply_override, build_config, load_yaml
from transferlab.console import make_console
from transferlab.run_dir import holds_run, lock_path

console = make_console()

# CLI flag -> config field (or fields); every other field is reachable through --set section.field=value
FLAG_FIELDS: dict[str, str | tuple[str, ...]] = {
    "model": "model.name", "data": "data.train", "eval_data": "data.eval", "text_column": "data.text_column",
    "label_column": "data.label_column", "text_pair_column": "data.text_pair_column",
    "max_train_examples": "data.max_train_examples", "max_eval_examples": "data.max_eval_examples",
    "strategy": "strategy.name", "lr": "strategy.lr", "head_lr": "strategy.head_lr",
    "epochs": "training.epochs", "batch_size": "training.batch_size", "max_length": "model.max_length",
    "pooling": "model.pooling", "eval_every": "training.eval_every", "patience": "training.early_stopping_patience",
    "seed": "seed", "name": "name", "output": "output_dir", "crf": "ner.crf", "task": "task",
    "keep_adapters": "strategy.keep_adapters", "budget": "strategy.budget",
    "warmup": "training.warmup", "schedule": "training.schedule", "grad_accum": "training.grad_accum",
    "weight_decay": "training.weight_decay", "dropout": ("model.head_dropout", "model.backbone_dropout"),
}

Opt = Annotated


def resolve_config(config: Path | None, flags: dict, overrides: list[str], base: dict | None = None) -> RunConfig:
    """Config file (or `base`) < flags < --set overrides, validated into a RunConfig."""
    import transferlab.tasks  # noqa: F401  (each task module registers its config section: ner, qa, ...)

    data = load_yaml(config) if config else dict(base or {})
    for flag, value in flags.items():
        fields = FLAG_FIELDS[flag]
        for field in (fields,) if isinstance(fields, str) else fields:
            if value is not None:
                apply_override(data, f"{field}={json.dumps(value)}")
    for assignment in overrides:
        apply_override(data, assignment)
    return build_config(data, str(config) if config else "the command-line options")


def with_augment(cfg: RunConfig, augment: bool | None) -> RunConfig:
    """`--augment`: the config's augmentation rates, or DEFAULT_AUGMENT's where it sets none; `--no-augment`: off."""
    if augment is None or augment == cfg.augment.enabled:
        return cfg
    return cfg.model_copy(update={"augment": DEFAULT_AUGMENT if augment else AugmentConfig()})


def print_warnings(warnings: list[dict]) -> None:
    """The doctor's findings, each with its fix."""
    if not warnings:
        console.print("[green]doctor: no warnings[/]")
        return
    console.print(f"[bold yellow]doctor: {len(warnings)} warning(s)[/]")
    for w in warnings:
        console.print(f"[yellow]! {w['code']}[/] {w['message']}\n  [dim]fix:[/] {w['fix']}", highlight=False)


def free_run_name(output: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when earlier runs hold it: a demo never replaces a run unasked."""
    taken = [name, *(f"{name}-{i}" for i in range(2, 1000))]
    free = next(n for n in taken if not holds_run(output / n) and not lock_path(output / n).exists())
    if free != name:
        console.print(f"{output / name} holds an earlier run (kept); this demo is saved as [bold]{output / free}[/] "
                      "(--overwrite replaces the earlier one instead)")
    return free
