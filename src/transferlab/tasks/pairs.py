"""Sentence pairs: similarity regression (STS-style score, MSE loss, Pearson / Spearman) and pair
classification (NLI-style labels). Both encode the two texts as one pair sequence ([CLS] a [SEP] b [SEP])
into the sequence model of classification: `num_labels == 1` makes its head a regressor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transferlab.config import ModelConfig, PairsConfig, RunConfig
from transferlab.data.labels import class_labels
from transferlab.data.sources import check_eval_labels, label_names, read_text_columns
from transferlab.deploy.predictor import Predictor
from transferlab.errors import UserError
from transferlab.evaluation.metrics import classification_metrics, regression_metrics
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.classification import ClassificationTask
from transferlab.tasks.table import data_rows, read_columns, saved_run_config, train_and_eval

SCORE = "score"  # the one "label" of a regression model (its id2label)
_REGRESSION_HINT = "for a score, set pairs.objective: regression (--set pairs.objective=regression)"


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


class PairClassificationTask(ClassificationTask):
    """NLI-style labels (entailment / neutral / contradiction, paraphrase / not...) of a text pair."""

    name = "pairs"

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        p = cfg.pairs
        columns = _text_columns(p) | {"label": (p.label_column, "pairs.label_column")}

        def load(source: str) -> pd.DataFrame:
            frame = read_columns(source, columns)
            return frame.assign(label=class_labels(frame["label"], source, p.label_column, _REGRESSION_HINT))

        train, evaluation = train_and_eval(cfg, load, stratify=True)
        labels = label_names(train)
        if len(labels) < 2:
            raise UserError(f"{cfg.data.train} has only one label, {labels[0]!r}; pair classification needs 2 or "
                            "more.", "Add pairs of the other classes, or use pairs.objective: regression for "
                                     "scores.")
        if cfg.data.eval:
            check_eval_labels(train["label"], evaluation["label"], cfg.data.eval)
        return RunData(train, evaluation, labels)


class PairRegressionTask(ClassificationTask):
    """A similarity score in a declared range: the one-output head of classification and MSE loss; model
    selection follows Spearman's rank correlation. Predictions are the raw regression output (not clipped)."""

    name = "pairs"
    metric = "spearman"

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        train, evaluation = train_and_eval(cfg, lambda source: read_scored_pairs(source, cfg.pairs), stratify=False)
        return RunData(train, evaluation)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData) -> PairRegressionTask:
        return cls([SCORE])

    def build_model(self, model_dir: Path, model_cfg: ModelConfig) -> torch.nn.Module:
        model = super().build_model(model_dir, model_cfg)
        model.config.problem_type = "regression"  # the transformers name of what a one-output head does
        return model

    def targets(self, frame: pd.DataFrame) -> list:
        return frame["label"].astype(float).tolist()

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        scores = model_output.logits.float().squeeze(-1)
        return {"predictions": scores.cpu().numpy(), "labels": batch["labels"].float().cpu().numpy()}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        return regression_metrics(outputs["labels"].tolist(), outputs["predictions"].tolist())


class PairsTask:
    """The registry entry of `pairs`: regression or classification, as the run config's pairs.objective says."""

    name = "pairs"

    @staticmethod
    def variant(cfg: RunConfig) -> type[Task]:
        return PairRegressionTask if cfg.pairs.objective == "regression" else PairClassificationTask

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        return cls.variant(cfg).load_data(cfg)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData) -> Task:
        return cls.variant(cfg).for_data(cfg, data)


def predict_rows(run: str | Path, texts: list[str] | None, input: Path | None) -> list[dict]:
    """`transferlab predict` on a pairs model: the pairs of the text_a / text_b columns of `input`, or the
    texts taken two by two; one row per pair (label and probability, or score), then text_a and text_b."""
    if input is not None:
        first, second = read_text_columns(input, ("text_a", "text_b"), "A pairs model")
    else:
        texts = texts or []
        if not texts or len(texts) % 2:
            raise UserError(f"predict: a pairs model takes its texts two by two (text_a text_b ...), got {len(texts)}.",
                            "Pass an even number of texts, or a file with text_a and text_b columns via --input.")
        first, second = texts[::2], texts[1::2]
    predictions = Predictor(run).predict(first, second)
    return [{k: p[k] for k in ("label", "score") if k in p} | {"text_a": a, "text_b": b}
            for p, a, b in zip(predictions, first, second, strict=True)]


def evaluate_file(model_dir: Path, data: str) -> dict:
    """Metrics of a saved pairs model on a file of pairs, read with the columns of its run's pairs section."""
    p = saved_run_config(model_dir).pairs
    predictor = Predictor(model_dir)
    if predictor.labels == [SCORE]:
        frame = read_scored_pairs(data, p)
        predictions = predictor.predict(frame["text"].tolist(), frame["text_pair"].tolist())
        return regression_metrics(frame["label"].tolist(), [x["score"] for x in predictions])
    frame = read_columns(data, _text_columns(p) | {"label": (p.label_column, "pairs.label_column")})
    frame = frame.assign(label=class_labels(frame["label"], data, p.label_column, _REGRESSION_HINT))
    check_eval_labels(predictor.labels, frame["label"], data)
    predictions = predictor.predict(frame["text"].tolist(), frame["text_pair"].tolist())
    probs = np.array([[x["probabilities"][label] for label in predictor.labels] for x in predictions])
    return classification_metrics([predictor.labels.index(label) for label in frame["label"]], probs,
                                  predictor.labels)
