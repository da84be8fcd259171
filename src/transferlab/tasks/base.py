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
from transferlab.models.groups import LayerGroups, layer_groups


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

    def layer_groups(self, model: torch.nn.Module) -> LayerGroups:
        """The model's layer groups, which strategies freeze and schedule (a backbone + head model by default)."""
        return layer_groups(model)

    @abstractmethod
    def encode(self, frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[dict]:
        """Feature dicts (token ids, labels, ...), unpadded; `input_ids` length drives length grouping."""

    def collate(self, features: list[dict], tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch (dynamic padding to the longest in the batch)."""
        return tokenizer.pad(features, return_tensors="pt")

    def eval_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        """The forward pass of evaluation (its output has `loss` when labels are given); tasks that decode
        with the model itself, such as generation, do it here."""
        return model(**inputs)

    @abstractmethod
    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """What evaluation keeps of one batch (e.g. probabilities and labels)."""

    @abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray]) -> dict:
        """Task metrics from the concatenated outputs of the eval set."""

    @torch.inference_mode()
    def run_model(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, features: list[dict],
                  batch_size: int = 32) -> dict[str, np.ndarray]:
        """Task outputs of a trained model over `features`, in their order (inference outside the trainer)."""
        model.eval()
        device = next(model.parameters()).device
        outputs = []
        for start in range(0, len(features), batch_size):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in self.collate(features[start:start + batch_size], tokenizer).items()}
            out = self.eval_forward(model, {k: v for k, v in batch.items() if not k.startswith("_")})
            outputs.append(self.outputs(out, batch))
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs else {}
