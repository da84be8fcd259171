"""Sentence pairs: similarity regression (STS-style score, MSE loss, Pearson / Spearman) and pair
classification (NLI-style labels). Both encode the two texts as one pair sequence ([CLS] a [SEP] b [SEP])
into the sequence model of classification: `num_labels == 1` makes its head a regressor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from transferlab.backbones.base import Backbone, Processor
from transferlab.config import ConfigSection, ModelConfig, RunConfig, register_section
from transferlab.data.labels import class_labels
from transferlab.data.sources import check_eval_labels, label_names
from transferlab.errors import UserError
from transferlab.evaluation.metrics import regression_metrics
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.classification import ClassificationTask
from transferlab.tasks.table import data_rows, input_columns, read_columns, text_inputs, train_and_eval

SCORE = "score"  # the one "label" of a regression model (its id2label)
_REGRESSION_HINT = "for a score, set pairs.objective: regression (--set pairs.objective=regression)"


class PairsConfig(ConfigSection):
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


register_section("pairs", PairsConfig)


def _text_columns(p: PairsConfig) -> dict[str, tuple[str, str]]:
    # the roles `text` / `text_pair` are what ClassificationTask.encode tokenizes as a pair
    return {"text": (p.text_a_column, "pairs.text_a_column"), "text_pair": (p.text_b_column, "pairs.text_b_column")}


def read_scored_pairs(source: str, p: PairsConfig) -> pd.DataFrame:
    """text, text_pair, label (float score) of a file; a score that is not a number or lies outside
    [min_score, max_score] is a UserError naming the data rows."""
    frame = read_columns(source, _text_columns(p) | {"label": (p.score_column, "pairs.score_column")})
    scores = pd.to_numeric(frame["label"], errors="coerce")
    not_number = scores.isna()
    if not_number.any():
        first = frame["label"][not_number].iloc[0]
        raise UserError(f"{source}: data row {data_rows(not_number)} has a score that is not a number "
                        f"(column {p.score_column!r}, e.g. {first!r}; row 1 is the first data row).",
                        "Write scores as numbers such as 3.5, or pick the score column with "
                        "--set pairs.score_column=COLUMN.")
    outside = (scores < p.min_score) | (scores > p.max_score)
    if outside.any():
        first = scores[outside].iloc[0]
        raise UserError(f"{source}: data row {data_rows(outside)} has a score outside the declared range "
                        f"[{p.min_score:g}, {p.max_score:g}] (column {p.score_column!r}, e.g. {first:g}; "
                        "row 1 is the first data row).",
                        "Fix those scores, or declare the real range with --set pairs.min_score=LOW "
                        "--set pairs.max_score=HIGH.")
    return frame.assign(label=scores.astype(float))


def read_labelled_pairs(source: str, p: PairsConfig) -> pd.DataFrame:
    """text, text_pair, label (str) of a file of classified pairs."""
    frame = read_columns(source, _text_columns(p) | {"label": (p.label_column, "pairs.label_column")})
    return frame.assign(label=class_labels(frame["label"], source, p.label_column, _REGRESSION_HINT))


class _PairsMixin:
    """What both pair objectives share: the pairs section, two text columns in and out, the registry name."""

    name = "pairs"
    pipeline_tag = "text-classification"  # a score (regression) or a label of the text pair

    @property
    def input_fields(self) -> list[str]:
        return ["text", "text_pair"]

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        p = run_cfg.section("pairs")
        return input_columns(source, {"text": (p.text_a_column, "--set pairs.text_a_column="),
                                      "text_pair": (p.text_b_column, "--set pairs.text_b_column=")},
                             "A pairs model")

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        return text_inputs(values, 2, ("text", "text_pair"), ("text_a", "text_b"))


class PairClassificationTask(_PairsMixin, ClassificationTask):
    """NLI-style labels (entailment / neutral / contradiction, paraphrase / not...) of a text pair."""

    def __init__(self, label_names: list[str], processor: Processor, pairs: bool = True):
        super().__init__(label_names, processor, pairs=True)

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        p = cfg.section("pairs")
        train, evaluation = train_and_eval(cfg, lambda source: read_labelled_pairs(source, p), stratify=True)
        labels = label_names(train)
        if len(labels) < 2:
            raise UserError(f"{cfg.data.train} has only one label, {labels[0]!r}; pair classification needs 2 or "
                            "more.", "Add pairs of the other classes, or use pairs.objective: regression for "
                                     "scores.")
        if cfg.data.eval:
            check_eval_labels(train["label"], evaluation["label"], cfg.data.eval)
        return RunData(train, evaluation, labels)

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        frame = read_labelled_pairs(source, run_cfg.section("pairs"))
        check_eval_labels(self.label_names, frame["label"], source)
        return frame

    def line(self, row: dict, prediction: dict) -> str:
        return f"{prediction['label']}\t{prediction['score']:.4f}\t{row['text']}\t{row['text_pair']}"


class PairRegressionTask(_PairsMixin, ClassificationTask):
    """A similarity score in a declared range: the one-output head of classification and MSE loss; model
    selection follows Spearman's rank correlation. Predictions are the raw regression output (not clipped)."""

    metric = "spearman"
    augmentable = False

    def __init__(self, label_names: list[str], processor: Processor, pairs: bool = True):
        super().__init__([SCORE], processor, pairs=True)

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        p = cfg.section("pairs")
        train, evaluation = train_and_eval(cfg, lambda source: read_scored_pairs(source, p), stratify=False)
        return RunData(train, evaluation)

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        model = super().build_model(backbone, model_cfg)
        model.config.problem_type = "regression"  # the transformers name of what a one-output head does
        return model

    def targets(self, frame: pd.DataFrame) -> list:
        return frame["label"].astype(float).tolist()

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {"logits": model_output.logits.float().cpu().numpy()}
        if "labels" in batch:
            out["labels"] = batch["labels"].float().cpu().numpy()
        return out

    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
        return regression_metrics(outputs["labels"].tolist(), outputs["logits"][:, 0].tolist())

    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        return [{"score": float(score)} for score in outputs["logits"][:, 0]]

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        return read_scored_pairs(source, run_cfg.section("pairs"))

    def line(self, row: dict, prediction: dict) -> str:
        return f"{prediction['score']:.4f}\t{row['text']}\t{row['text_pair']}"


class PairsTask:
    """The registry entry of `pairs`: regression or classification, as the run config's pairs.objective (or a
    saved model's head) says."""

    name = "pairs"
    pipeline_tag = _PairsMixin.pipeline_tag

    @staticmethod
    def variant(cfg: RunConfig) -> type[Task]:
        return PairRegressionTask if cfg.section("pairs").objective == "regression" else PairClassificationTask

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        return cls.variant(cfg).load_data(cfg)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> Task:
        return cls.variant(cfg).for_data(cfg, data, processor)

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> Task:
        regression = config.get("num_labels", len(config.get("id2label", {}))) == 1
        variant = PairRegressionTask if regression else PairClassificationTask
        return variant.for_saved(model_dir, config, run_cfg, processor)
