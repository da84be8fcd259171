"""The Task interface: everything task-specific between examples and metrics, nothing about training."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase


class Task(ABC):
    """Turns examples into features, batches into tensors, model outputs into predictions and metrics."""

    name: str
    metric: str  # the metric early stopping and model selection follow
    greater_is_better: bool = True

    @abstractmethod
    def build_model(self, model_dir: Path, **head_config) -> torch.nn.Module:
        """A fresh task model on the pretrained backbone in `model_dir`."""

    @abstractmethod
    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        """One feature dict (token ids, labels, ...) per example, unpadded."""

    def collate(self, features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch (dynamic padding to the longest in the batch)."""
        return tokenizer.pad(features, return_tensors="pt")

    @abstractmethod
    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """What evaluation keeps of one batch (e.g. probabilities and labels)."""

    @abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        """Task metrics from the concatenated outputs of the eval set."""
