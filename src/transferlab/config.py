"""A run, fully described: pydantic models, YAML in and out, `--set a.b=value` overrides, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferlab.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str = Field("minilm", description="'minilm' (bundled) or a local Hugging Face model directory")
    pooling: Literal["mean", "cls", "pooler", "max"] | None = Field(
        None, description="None = the backbone's own pooling config (mean for all-MiniLM-L6-v2), else cls")
    head_hidden_size: int | None = Field(None, ge=0, description="dense layer size; None = hidden size, 0 = none")
    head_activation: Literal["tanh", "gelu", "relu", "identity"] = "tanh"
    head_dropout: float = Field(0.1, ge=0, lt=1)
    max_length: int = Field(128, ge=8, le=4096)


class DataConfig(_Section):
    train: str = Field("rotten-tomatoes", description="bundled dataset name or a CSV / JSONL / Parquet file")
    eval: str | None = Field(None, description="separate eval file; None = stratified split of train")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_examples: int | None = Field(None, ge=2, description="stratified subset of the training split")
    max_eval_examples: int | None = Field(None, ge=2)


class StrategyConfig(_Section):
    name: str = "freeze-attention"
    lr: float | None = Field(None, gt=0, description="base lr; None = the strategy's default")
    head_lr: float | None = Field(None, gt=0)


class TrainingConfig(_Section):
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    grad_accum: int = Field(1, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of each phase's steps")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1, description="evaluate every N optimizer steps (and each epoch)")
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps (and each epoch)")
    early_stopping_patience: int | None = Field(None, ge=1, description="evals without improvement")
    metric: str | None = Field(None, description="model-selection metric; None = the task's default")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 autocast where the hardware runs it natively (CUDA, AVX512-BF16 CPUs)")
    restore_best: bool = Field(True, description="end with the weights of the best evaluation")
    group_by_length: bool = True


class RunConfig(_Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    task: str = Field("classification", description="classification (more tasks: see the README)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    strategy: StrategyConfig = StrategyConfig()
    training: TrainingConfig = TrainingConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _describe(err: ValidationError, origin: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"Invalid configuration in {origin}: " + "; ".join(parts) + "."


def build_config(data: dict[str, Any], origin: str = "the configuration") -> RunConfig:
    """Validate a nested dict into a RunConfig, turning pydantic errors into a UserError."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_describe(err, origin),
                        "Fix the named option (see `transferlab train --help` and the README's config section).") \
            from err


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run config YAML file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file '{path}' does not exist.", "Pass the path of a YAML run config.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"Config file '{path}' is not valid UTF-8 YAML: {err}.",
                        "Fix the syntax (a YAML mapping of sections).") from err
    if not isinstance(data, dict):
        raise UserError(f"Config file '{path}' must hold a YAML mapping, not {type(data).__name__}.",
                        "Start from examples/sentiment.yaml.")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `section.field=value` override (value parsed as YAML) to a nested dict in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"Override '{assignment}' is not of the form section.field=value.",
                        "Write e.g. --set training.warmup=0.1.")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"Override '{assignment}': '{part}' is not a section.", "Check the field path.")
    node[leaf] = yaml.safe_load(raw)


def save_yaml(config: RunConfig, path: Path) -> None:
    """Write the resolved config so the run can be re-run as is."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
