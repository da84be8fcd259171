"""A run, fully described: pydantic models, YAML in and out, `--set a.b=value` overrides, clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from transferlab.data.augment import AugmentConfig
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
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random = same architecture with fresh weights (the from-scratch baseline)")


class DataConfig(_Section):
    train: str = Field("rotten-tomatoes", description="bundled dataset name or a CSV / JSONL / Parquet file")
    eval: str | None = Field(None, description="separate eval file; None = stratified split of train")
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_examples: int | None = Field(None, ge=2, description="stratified subset of the training split")
    max_eval_examples: int | None = Field(None, ge=2)


class PhaseConfig(_Section):
    """One phase of a custom plan: which group patterns learn and at what lr."""

    name: str | None = None
    epochs: float = Field(1, gt=0)
    lrs: dict[str, float] = Field(description="group pattern (head, layer.4-5.ffn, layer.*) -> lr; others frozen")
    warmup: float | None = Field(None, ge=0, lt=1, description="None = training.warmup")
    schedule: Literal["linear", "cosine", "constant"] | None = Field(None, description="None = training.schedule")


class StrategyConfig(_Section):
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

    @model_validator(mode="after")
    def _phases_mean_custom(self) -> StrategyConfig:
        # `phases:` alone is enough to ask for a custom plan; an explicit other name is refused by build_plan
        if self.phases is not None and "name" not in self.model_fields_set:
            self.name = "custom"
        return self


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
    feature_cache: bool = Field(True, description="compute a phase's frozen bottom once and train the layers above")


class DoctorConfig(_Section):
    """Thresholds of the pitfall guards that watch a run (see training/doctor.py)."""

    enabled: bool = True
    max_full_lr: float = Field(1e-4, gt=0, description="highest safe lr when embeddings and all layers train")
    max_gap: float = Field(0.15, ge=0, le=1, description="largest acceptable train - eval metric gap")
    small_data: int = Field(500, ge=0, description="train examples below which full fine-tuning overfits")
    min_updates: int = Field(50, ge=0, description="optimizer updates below which a run is too short")
    rise_tolerance: float = Field(0.1, ge=0, description="relative rise of a loss that counts as rising")
    train_eval_examples: int = Field(500, ge=0, description="train examples scored at the end; 0 = skip")


class NerConfig(_Section):
    """Token classification (task: tokens): where the tokens and BIO tags are, and how they are learned."""

    tokens_column: str = Field("tokens", description="JSONL/JSON/Parquet column of token lists (CoNLL: 1st column)")
    tags_column: str = Field("tags", description="column of BIO tag lists (CoNLL: last column)")
    crf: bool = Field(False, description="a CRF layer with BIO constraints on top, Viterbi decoding")
    label_all_subtokens: bool = Field(False, description="tag every sub-token of a word, not only the first")


class QaConfig(_Section):
    """Extractive question answering (task: qa) on SQuAD-format JSON."""

    doc_stride: int = Field(64, ge=0, description="tokens shared by consecutive windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="longest answer span, in tokens")
    version_2_with_negative: bool = Field(False, description="SQuAD v2: questions may have no answer")


class PairsConfig(_Section):
    """Sentence pairs (task: pairs): two text columns and a score (regression) or a label (classification)."""

    text_a_column: str = "text_a"
    text_b_column: str = "text_b"
    objective: Literal["regression", "classification"] = Field(
        "regression", description="regression = a similarity score (MSE loss); classification = a label (NLI-style)")
    score_column: str = Field("score", description="regression target column")
    label_column: str = Field("label", description="classification target column")
    min_score: float = Field(0.0, description="declared score range: a score outside it is an error")
    max_score: float = 5.0

    @model_validator(mode="after")
    def _range_not_empty(self) -> PairsConfig:
        if self.min_score >= self.max_score:
            raise ValueError(f"min_score {self.min_score} must be below max_score {self.max_score}")
        return self


class Text2TextConfig(_Section):
    """Text-to-text (task: text2text): an encoder-decoder model generates the target from the source."""

    source_column: str = "source"
    target_column: str = "target"
    prefix: str = Field("", description="prepended to every source (T5 style), e.g. 'summarize: '")
    max_target_length: int = Field(64, ge=1, le=4096, description="target tokens kept in training and generated")
    num_beams: int = Field(1, ge=1, description="1 = greedy decoding, more = beam search")
    decoder: str | None = Field(None, description="an encoder-only model.name is warm-started as an encoder-decoder; "
                                "its decoder from this model ('minilm' or a dir); None = model.name")


class RunConfig(_Section):
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
    ner: NerConfig = NerConfig()
    qa: QaConfig = QaConfig()
    pairs: PairsConfig = PairsConfig()
    text2text: Text2TextConfig = Text2TextConfig()

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
        node = node.setdefault(part, {})
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


def save_yaml(config: RunConfig, path: Path) -> None:
    """Write the resolved config so the run can be re-run as is."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
