"""A run, fully described: pydantic models, YAML in and out, `--set a.b=value` overrides, clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from transferlab.atomic import write_text_atomic
from transferlab.errors import UserError


class ConfigSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(BaseModel):
    """Rates of each augmentation (0 = off) and how many augmented copies to add per training text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    synonym: float = Field(0.0, ge=0, le=1, description="fraction of words replaced by a WordNet synonym")
    dropout: float = Field(0.0, ge=0, le=1, description="probability of deleting each word")
    swap: float = Field(0.0, ge=0, le=1, description="number of random word swaps, as a fraction of words")
    shuffle: float = Field(0.0, ge=0, le=1, description="probability of shuffling the sentences")
    copies: int = Field(1, ge=0, description="augmented variants added per original text")

    @property
    def enabled(self) -> bool:
        """True when at least one augmentation would change a text and copies are requested."""
        return self.copies > 0 and any((self.synonym, self.dropout, self.swap, self.shuffle))


#: What `train --augment` and `compare --augment` use when the config's augment section sets no rate.
DEFAULT_AUGMENT = AugmentConfig(synonym=0.1, swap=0.1, dropout=0.1, copies=1)


class ModelConfig(ConfigSection):
    name: str = Field("minilm", description="'minilm' (bundled) or a local Hugging Face model directory")
    pooling: Literal["mean", "cls", "pooler", "max"] | None = Field(
        None, description="None = the backbone's own pooling config (mean for all-MiniLM-L6-v2), else cls")
    head_hidden_size: int | None = Field(None, ge=0, description="dense layer size; None = hidden size, 0 = none")
    head_activation: Literal["tanh", "gelu", "relu", "identity"] = "tanh"
    head_dropout: float = Field(0.1, ge=0, lt=1)
    backbone_dropout: float | None = Field(
        None, ge=0, lt=1, description="every dropout rate inside the pretrained backbone; None = the backbone's own")
    max_length: int = Field(128, ge=8, le=4096)
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random = same architecture with fresh weights (the from-scratch baseline)")


class DataConfig(ConfigSection):
    train: str = Field("rotten-tomatoes", description="bundled dataset name or a CSV / JSONL / Parquet file")
    eval: str | None = Field(None, description="separate eval file; None = stratified split of train")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_examples: int | None = Field(None, ge=2, description="stratified subset of the training split")
    max_eval_examples: int | None = Field(None, ge=2)


class PhaseConfig(ConfigSection):
    """One phase of a custom plan: which group patterns learn and at what lr."""

    name: str | None = None
    epochs: float = Field(1, gt=0)
    lrs: dict[str, float] = Field(description="group pattern (head, layer.4-5.ffn, layer.*) -> lr; others frozen")
    warmup: float | None = Field(None, ge=0, lt=1, description="None = training.warmup")
    schedule: Literal["linear", "cosine", "constant"] | None = Field(None, description="None = training.schedule")
    resolution: int | None = Field(None, ge=16, le=2048, description="image tasks: train this phase on resolution x "
                                                                     "resolution images; None = image.resolution")


class LoraOptions(ConfigSection):
    """LoRA adapters (peft): low-rank updates beside the frozen weights of the layers of the `target` kinds."""

    rank: int = Field(8, ge=1, description="rank of each update (the `lora:R` name sets it too)")
    alpha: float | None = Field(None, gt=0, description="scale numerator (update x alpha / rank); None = 2 x rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input (peft's default 0: "
                           "0.1 costs 22% more time per step for 0.7 points at 2,000 reviews)")
    target: list[str] | None = Field(None, min_length=1,
                                     description="kinds of layer groups whose linear/conv layers get adapters: "
                                     "attention, ffn, block; None = attention, or block where a model has none")
    layers: int | None = Field(None, ge=1, description="adapt only the top N levels; None = every level")


class PromptOptions(ConfigSection):
    """Prompt tuning: trainable virtual tokens before every input."""

    tokens: int = Field(20, ge=1, description="virtual tokens (the `prompt-tuning:N` name sets it too)")
    init: Literal["vocab", "random"] = Field("vocab", description="vocab = embeddings of random vocabulary words")


class StrategyConfig(ConfigSection):
    name: str = Field("freeze-attention", description="a named strategy (see `transferlab plan`) or 'custom'")
    lr: float | None = Field(None, gt=0, description="base lr; None = the strategy's default")
    head_lr: float | None = Field(None, gt=0)
    decay: Annotated[float, Field(gt=0, le=1)] | Literal["fastai"] | None = Field(
        None, description="llrd/gradual: lr factor per layer going down; fastai = 1/2.6")
    depth: int | None = Field(None, ge=0, description="progressive/gradual: layers unfrozen from the top; None = all")
    unfreeze_embeddings: bool = Field(False, description="progressive/gradual: a last phase adds the embeddings")
    epochs_per_phase: PositiveFloat | list[PositiveFloat] | None = Field(
        None, description="progressive/gradual: epochs of each phase; None = training.epochs split evenly")
    phase_lrs: list[PositiveFloat] | None = Field(
        None, description="progressive/gradual: lr of each phase (the last repeats); None = head_lr, then lr")
    phases: list[PhaseConfig] | None = Field(None, description="the phases of a custom plan")
    lora: LoraOptions | None = Field(None, description="LoRA options; given with a custom plan, adds the adapters")
    prompt: PromptOptions | None = Field(None, description="prompt-tuning options; given with a custom plan, adds "
                                                           "the virtual tokens")
    keep_adapters: bool = Field(False, description="also save the adapters and head alone (peft format) in adapter/")
    budget: str | None = Field(None, description="auto: time for probes + the chosen run (90s, 10m, 1h, or 3ep = "
                                                 "3 epochs of full fine-tuning); None = no limit")

    @model_validator(mode="after")
    def _budget_is_for_auto(self) -> StrategyConfig:
        if self.budget is not None and self.name != "auto":
            raise ValueError(f"budget {self.budget!r} applies to strategy 'auto' only (this config names "
                             f"'{self.name}'): pass --strategy auto, or drop --budget")
        return self

    @model_validator(mode="after")
    def _phases_mean_custom(self) -> StrategyConfig:
        # `phases:` alone is enough to ask for a custom plan; an explicit other name is refused by build_plan
        if self.phases is not None and "name" not in self.model_fields_set:
            self.name = "custom"
        return self


class TrainingConfig(ConfigSection):
    epochs: float = Field(3, gt=0)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1, description="evaluation and frozen-feature cache batches "
                                                            "(default: the task's, sized for throughput)")
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
    feature_cache: bool = Field(True, description="compute a phase's frozen bottom once and train the layers above")
    bn_recalibration: int = Field(512, ge=0, description="training examples that re-estimate the statistics of "
                                  "batch-norm layers that learn, before each evaluation (0 = off)")
    fast_cpu_training: bool = Field(True, description="on a CPU: dropout masks from 16-bit draws and attention over "
                                    "≤ 128 tokens as matmuls while training (training/fast_dropout.py); depthwise "
                                    "convolutions in fp32 under bf16 where a gradient flows "
                                    "(training/fp32_depthwise.py)")
    keep_freed_memory: bool = Field(True, description="glibc keeps freed tensor memory for the next step instead "
                                    "of returning it to the OS (faster steps; training/allocator.py)")
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers, writing into the run directory (tb/, mlruns/)")


class DoctorConfig(ConfigSection):
    """Thresholds of the pitfall guards that watch a run (see training/doctor.py)."""

    enabled: bool = True
    max_pretrained_lr: float = Field(1e-4, gt=0, description="highest safe lr of pretrained layers")
    max_gap: float = Field(0.15, ge=0, le=1, description="largest acceptable train - eval metric gap")
    chance_margin: float = Field(0.05, ge=0, le=1, description="a train score this close to chance is no memorising")
    collapse_share: float = Field(0.95, gt=0.5, le=1, description="share of eval predictions in one class that "
                                  "counts as a collapsed model")
    small_data: int = Field(500, ge=0, description="train examples below which full fine-tuning overfits")
    min_updates: int = Field(50, ge=0, description="optimizer updates below which a run is too short")
    rise_tolerance: float = Field(0.1, ge=0, description="relative rise of a loss that counts as rising")
    train_eval_examples: int = Field(500, ge=0, description="train examples scored at the end; 0 = skip")


class RunConfig(ConfigSection):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 42
    task: str = Field("classification", description="classification (more tasks: see the README)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    strategy: StrategyConfig = StrategyConfig()
    training: TrainingConfig = TrainingConfig()
    augment: AugmentConfig = AugmentConfig()
    doctor: DoctorConfig = DoctorConfig()
    # the sections of the tasks (ner, qa, ...) are registered by their task modules: see `register_section`
    model_config = ConfigDict(extra="allow")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def section(self, name: str) -> BaseModel:
        """A task's config section (e.g. `ner`), with its defaults where the config gives none."""
        return getattr(self, name)


TASK_SECTIONS: dict[str, type[BaseModel]] = {}


def register_section(name: str, section: type[BaseModel]) -> None:
    """A task module adds its own config section (`ner:`, `qa:`...) to every run config."""
    TASK_SECTIONS[name] = section


def _describe(err: ValidationError, origin: str, section: str | None = None) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in ((section,) if section else ()) + tuple(e["loc"]))
        parts.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"Invalid configuration in {origin}: " + "; ".join(parts) + "."


def build_config(data: dict[str, Any], origin: str = "the configuration") -> RunConfig:
    """Validate a nested dict into a RunConfig (task sections included), turning pydantic errors into a UserError."""
    fix = "Fix the named option (see `transferlab train --help` and docs/training.md)."
    data = dict(data)
    sections = {}
    for name, section in TASK_SECTIONS.items():
        try:
            sections[name] = section.model_validate(data.pop(name, None) or {})
        except ValidationError as err:
            raise UserError(_describe(err, origin, name), fix) from err
    unknown = sorted(set(data) - set(RunConfig.model_fields))
    if unknown:
        known = sorted([*RunConfig.model_fields, *TASK_SECTIONS])
        raise UserError(f"Invalid configuration in {origin}: unknown section or field {', '.join(map(repr, unknown))}.",
                        f"The top level of a run config holds: {', '.join(known)}.")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_describe(err, origin), fix) from err
    for name, section in sections.items():
        setattr(cfg, name, section)
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run config YAML file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file '{path}' does not exist.", "Pass the path of a YAML run config.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"Config file '{path}' is not UTF-8 text (byte offset {err.start}: {err.reason}).",
                        "Save it as UTF-8.") from err
    data = _parse_yaml(text, f"Config file '{path}'", "Fix the syntax (a YAML mapping of sections).") or {}
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
        if node.get(part) is None:  # an optional section left out (strategy.lora: null) starts empty
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise UserError(f"Override '{assignment}': '{part}' is not a section.", "Check the field path.")
    node[leaf] = _parse_yaml(raw, f"Override '{assignment}': the value {raw!r}",
                             "Write the value as YAML: a number (3), a word (cosine), a list ([1, 2]), or a "
                             "string in quotes (--set 'data.train=\"[1\"').")


_YAML_TAG = re.compile(r"for the tag '([^']+)'")  # in PyYAML's ConstructorError for a tag safe_load refuses


def _parse_yaml(text: str, what: str, fix: str) -> Any:
    """safe_load `text`; a syntax error or a tag is a one-line UserError saying where (`what` names the text)."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        tag = _YAML_TAG.search(err.problem or "")
        if isinstance(err, yaml.constructor.ConstructorError) and tag:
            # safe_load builds no Python objects; say so instead of blaming the syntax
            name = tag[1].replace("tag:yaml.org,2002:", "!!")
            raise UserError(f"{what} uses the YAML tag {name} ({where.rstrip(': ')}); tags are not allowed.",
                            "Write plain YAML only: mappings, lists, strings, numbers and true/false.") from err
        problem = "; ".join(part for part in (err.context, err.problem) if part)
        raise UserError(f"{what} is not valid YAML ({where}{problem}).", fix) from err
    except yaml.YAMLError as err:
        raise UserError(f"{what} is not valid YAML ({' '.join(str(err).split())}).", fix) from err


def yaml_text(config: RunConfig) -> str:
    """The resolved config as YAML, re-runnable as is."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_yaml(config: RunConfig, path: Path) -> None:
    """Write the resolved config (atomically) so the run can be re-run as is."""
    write_text_atomic(path, yaml_text(config))
