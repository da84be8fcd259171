"""The Task interface: everything task-specific between examples and metrics, nothing about training."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from transferlab.config import ModelConfig, RunConfig


@dataclass
class RunData:
    """The training and evaluation examples of a run, and the label set where the task has one."""

    train: pd.DataFrame
    eval: pd.DataFrame
    labels: list[str] | None = None


class Task(ABC):
    """Turns examples into features, batches into tensors, model outputs into predictions and metrics.

    A task class loads its own data (`load_data`) and is then built for that data (`for_data`), since
    e.g. the label set comes from the training examples.
    """

    name: str
    metric: str  # the metric early stopping and model selection follow
    greater_is_better: bool = True

    @classmethod
    @abstractmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        """Load, validate and split the examples the config names."""

    @classmethod
    @abstractmethod
    def for_data(cls, cfg: RunConfig, data: RunData) -> Task:
        """The task instance for this run's data (label set, options)."""

    @abstractmethod
    def build_model(self, model_dir: Path, model_cfg: ModelConfig) -> torch.nn.Module:
        """A fresh task model on the pretrained backbone in `model_dir`."""

    @abstractmethod
    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        """Feature dicts (token ids, labels, ...), unpadded; `input_ids` length drives length grouping."""

    def collate(self, features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch (dynamic padding to the longest in the batch)."""
        return tokenizer.pad(features, return_tensors="pt")

    @abstractmethod
    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """What evaluation keeps of one batch (e.g. probabilities and labels)."""

    @abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        """Task metrics from the concatenated outputs of the eval set."""
