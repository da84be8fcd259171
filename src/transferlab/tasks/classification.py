"""Sequence classification (binary and multi-class), one text or a text pair per example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transferlab.backbones.base import Backbone, Processor
from transferlab.config import ModelConfig, RunConfig
from transferlab.data.sources import check_eval_labels, label_names, load_labelled
from transferlab.data.splits import stratified_split, subsample
from transferlab.evaluation.metrics import classification_metrics, softmax
from transferlab.models.build import build_task_model, default_pooling
from transferlab.models.modeling_transferlab import TransferlabForSequenceClassification
from transferlab.models.standard import load_task_model
from transferlab.tasks.base import RunData, Task
from transferlab.tasks.table import input_columns, text_inputs


class ClassificationTask(Task):
    """Labels are strings in the data; ids follow `label_names` order and are saved as id2label."""

    name = "classification"
    pipeline_tag = "text-classification"
    metric = "accuracy"
    augmentable = True

    def __init__(self, label_names: list[str], processor: Processor, pairs: bool = False):
        super().__init__(processor)
        self.label_names = label_names
        self.label_to_id = {name: i for i, name in enumerate(label_names)}
        self.pairs = pairs  # trained on text pairs: predictions need the second text too

    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        d = cfg.data
        frame = load_labelled(d.train, d.text_column, d.label_column, d.text_pair_column)
        if d.eval:
            train = frame
            evaluation = load_labelled(d.eval, d.text_column, d.label_column, d.text_pair_column)
            check_eval_labels(train["label"], evaluation["label"], d.eval)
        else:
            train, evaluation = stratified_split(frame, d.eval_fraction, cfg.seed)
        if d.max_train_examples and d.max_train_examples < len(train):
            train = subsample(train, d.max_train_examples, cfg.seed)
        if d.max_eval_examples and d.max_eval_examples < len(evaluation):
            evaluation = subsample(evaluation, d.max_eval_examples, cfg.seed)
        return RunData(train, evaluation, label_names(train))

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> ClassificationTask:
        return cls(data.labels, processor, pairs=cfg.data.text_pair_column is not None)

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> ClassificationTask:
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        return cls(labels, processor, pairs=run_cfg.data.text_pair_column is not None)

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            backbone, TransferlabForSequenceClassification, task=self.name,
            num_labels=len(self.label_names), id2label=dict(enumerate(self.label_names)),
            label2id=dict(self.label_to_id), pooling=model_cfg.pooling or default_pooling(backbone.model_dir),
            head_hidden_size=model_cfg.head_hidden_size, head_activation=model_cfg.head_activation,
            head_dropout=model_cfg.head_dropout, backbone_dropout=model_cfg.backbone_dropout)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return load_task_model(model_dir, TransferlabForSequenceClassification)

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        p = self.processor
        enc = p.tokenizer(frame["text"].tolist(), pairs, truncation=True, max_length=p.max_length)
        keys = list(enc.keys())
        labels = self.targets(frame) if "label" in frame else None
        return [{**{k: enc[k][i] for k in keys}, **({"labels": labels[i]} if labels else {})}
                for i in range(len(frame))]

    def targets(self, frame: pd.DataFrame) -> list:
        """The training target of each example: its label id."""
        return [self.label_to_id[label] for label in frame["label"]]

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        out = {"logits": model_output.logits.float().cpu().numpy()}
        if "labels" in batch:
            out["labels"] = batch["labels"].cpu().numpy()
        return out

    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
        return classification_metrics(outputs["labels"].tolist(), softmax(outputs["logits"]), self.label_names)

    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        """Label, probability of that label, and every label's probability, for each row."""
        probs = softmax(outputs["logits"])
        best = probs.argmax(axis=-1)
        return [{"label": self.label_names[b], "score": float(row[b]),
                 "probabilities": dict(zip(self.label_names, map(float, row), strict=True))}
                for b, row in zip(best, probs, strict=True)]

    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        d = run_cfg.data
        frame = load_labelled(source, d.text_column, d.label_column, d.text_pair_column)
        check_eval_labels(self.label_names, frame["label"], source)
        return frame

    @property
    def input_fields(self) -> list[str]:
        return ["text", "text_pair"] if self.pairs else ["text"]

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        d = run_cfg.data
        roles = {"text": (d.text_column, "--text-column")}
        if self.pairs:
            roles["text_pair"] = (d.text_pair_column, "--text-pair-column")
        return input_columns(source, roles, f"A {self.name} model")

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        return text_inputs(values, 2 if self.pairs else 1, ("text", "text_pair"))

    def line(self, row: dict, prediction: dict) -> str:
        return f"{prediction['label']}\t{prediction['score']:.4f}\t{row['text']}"
