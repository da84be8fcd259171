"""Sequence classification (binary and multi-class), one text or a text pair per example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from transferlab.config import ModelConfig, RunConfig
from transferlab.data.sources import check_eval_labels, label_names, load_labelled
from transferlab.data.splits import stratified_split, subsample
from transferlab.evaluation.metrics import classification_metrics
from transferlab.models.backbone import build_task_model, default_pooling
from transferlab.models.modeling_transferlab import TransferlabForSequenceClassification
from transferlab.tasks.base import RunData, Task


class ClassificationTask(Task):
    """Labels are strings in the data; ids follow `label_names` order and are saved as id2label."""

    name = "classification"
    metric = "accuracy"

    def __init__(self, label_names: list[str]):
        self.label_names = label_names
        self.label_to_id = {name: i for i, name in enumerate(label_names)}

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
    def for_data(cls, cfg: RunConfig, data: RunData) -> ClassificationTask:
        return cls(data.labels)

    def build_model(self, model_dir: Path, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            model_dir, TransferlabForSequenceClassification, task=self.name,
            num_labels=len(self.label_names), id2label=dict(enumerate(self.label_names)),
            label2id=dict(self.label_to_id), pooling=model_cfg.pooling or default_pooling(model_dir),
            head_hidden_size=model_cfg.head_hidden_size, head_activation=model_cfg.head_activation,
            head_dropout=model_cfg.head_dropout)

    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
        enc = tokenizer(frame["text"].tolist(), pairs, truncation=True, max_length=max_length)
        labels = self.targets(frame)
        keys = list(enc.keys())
        return [{**{k: enc[k][i] for k in keys}, "labels": labels[i]} for i in range(len(labels))]

    def targets(self, frame: pd.DataFrame) -> list:
        """The training target of each example: its label id."""
        return [self.label_to_id[label] for label in frame["label"]]

    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        probs = torch.softmax(model_output.logits.float(), dim=-1)
        return {"probs": probs.cpu().numpy(), "labels": batch["labels"].cpu().numpy()}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        return classification_metrics(outputs["labels"].tolist(), outputs["probs"], self.label_names)
