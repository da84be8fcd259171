"""The Task interface: everything specific to one kind of example, for training and for a saved model alike.

A task reads labelled files, encodes examples with its backbone's processor, collates batches, builds the head
model, turns model outputs into arrays (`outputs`), metrics and per-row predictions (`decode`), and writes them out.
The pipeline, the trainer, the lab and the deploy chain talk to tasks only through this interface, so they know no
task names. A task instance holds configuration only (labels, options, the processor): no state that changes
with the order of calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from transferlab.backbones import layer_groups
from transferlab.backbones.base import Backbone, Processor
from transferlab.backbones.groups import LayerGroups
from transferlab.config import ModelConfig, RunConfig
from transferlab.errors import UserError
from transferlab.models.standard import standard_form


@dataclass
class RunData:
    """The training and evaluation examples of a run, and the label set where the task has one."""

    train: pd.DataFrame
    eval: pd.DataFrame
    labels: list[str] | None = None


@dataclass
class Encoded:
    """Examples (one row each) and their encoded features (one or more per row, e.g. QA windows)."""

    frame: pd.DataFrame
    features: list[dict]

    def __len__(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class TrainingDraw:
    """Where a training batch falls in a run: all that its random variation (augmentation) may depend on, besides
    the examples' positions, so a seed gives the same batches and a resumed run replays them. `resolution` is the
    phase's input size (None: the task's own)."""

    seed: int
    phase: int
    epoch: int
    resolution: int | None = None


class Task(ABC):
    """Turns examples into features, batches into tensors, model outputs into predictions and metrics.

    A task class loads its own data (`load_data`) and is then built for that data and a backbone's processor
    (`for_data`), since e.g. the label set comes from the training examples; a saved model's task is rebuilt from
    the model's config (`for_saved`).
    """

    name: ClassVar[str]
    metric: ClassVar[str]  # the metric early stopping and model selection follow
    greater_is_better: ClassVar[bool] = True
    modality: ClassVar[str] = "text"  # the kind of processor (input) the task reads
    output_names: ClassVar[tuple[str, ...]] = ("logits",)  # model outputs predictions need (exported graphs' outputs)
    per_position: ClassVar[bool] = False  # the outputs have a sequence axis (a tag or span score per token)
    augmentable: ClassVar[bool] = False  # a reworded or transformed input keeps its label (whole-input labels)
    exportable: ClassVar[bool] = True  # the model is one forward pass (not generation), so ONNX/TorchScript apply
    backbone_prefix: ClassVar[str] = "backbone."  # where the backbone sits in the task model ("" = the model itself)
    pipeline_tag: ClassVar[str] = ""  # the transformers pipeline() task that runs a saved model (model cards show it)
    tta_modes: ClassVar[dict[str, str]] = {}  # test-time augmentations `tta_forward` offers: name -> what it averages
    eval_batch_size: ClassVar[int] = 128  # inference batches when the config sets none: the fastest measured size

    def __init__(self, processor: Processor):
        if processor.modality != self.modality:
            raise UserError(f"Task '{self.name}' reads {self.modality} inputs, but the backbone takes "
                            f"{processor.modality} inputs.", f"Use a {self.modality} backbone for this task.")
        self.processor = processor

    # ---- training ----------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        """Load, validate and split the examples the config names."""

    @classmethod
    @abstractmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> Task:
        """The task instance for this run's data (label set, options) and backbone processor."""

    @abstractmethod
    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        """A fresh task model on the pretrained backbone."""

    def layer_groups(self, model: torch.nn.Module) -> LayerGroups:
        """The model's layer groups, which strategies freeze and schedule (a backbone + head model by default)."""
        return layer_groups(model, self.backbone_prefix)

    @abstractmethod
    def encode(self, frame: pd.DataFrame) -> list[dict]:
        """Feature dicts of the examples of `frame` (model inputs, targets, bookkeeping keys starting with '_')."""

    def encoded(self, frame: pd.DataFrame) -> Encoded:
        return Encoded(frame, self.encode(frame))

    def length(self, feature: dict) -> int:
        """The cost of one feature, which length-grouped batching sorts by."""
        return self.processor.length(feature)

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of features into a batch (dynamic padding to the longest in the batch)."""
        return self.processor.pad(features)

    def collate_train(self, features: list[dict], indices: list[int], draw: TrainingDraw) -> dict[str, torch.Tensor]:
        """A training batch of the features at positions `indices` of the training set: `collate`, plus whatever
        the task varies in training (augmentation, the phase's resolution), drawn from `draw` and the positions."""
        return self.collate(features)

    def training_variation(self) -> str:
        """What changes the training batches every epoch, in words that end a sentence ("image.augment (flip)
        changes the training images"); '' when nothing does. The frozen-feature cache then holds only the evaluation
        examples."""
        return ""

    def tta_forward(self, forward: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor],
                    mode: str) -> Any:
        """The output of `forward` (a backend) on a batch, averaged over the test-time views `mode` (one of
        `tta_modes`) makes of it; a task without test-time views returns the output itself."""
        return forward(inputs)

    def graph_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        """The forward pass exported graphs record: tensors in, `output_names` out (no decoding loops)."""
        return model(**inputs)

    def eval_forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
        """The forward pass of evaluation (its output has `loss` when labels are given); tasks that decode
        with the model itself, such as generation, do it here."""
        return model(**inputs)

    @abstractmethod
    def outputs(self, model_output, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """What evaluation and prediction keep of one batch (e.g. probabilities and labels)."""

    @abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> dict:
        """Task metrics from the outputs over every feature of `frame` (in feature order)."""

    # ---- a saved model ------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor) -> Task:
        """The task a saved model was trained for, from its directory, config.json and its run's config."""

    @abstractmethod
    def load_model(self, model_dir: Path) -> torch.nn.Module:
        """The saved PyTorch model (safetensors), in eval mode."""

    def save_model(self, model: torch.nn.Module, model_dir: Path) -> None:
        """Write the model so that `load_model` and the ecosystem's loaders read it back: as the transformers class
        that computes the same (e.g. BertForTokenClassification) where there is one, else as the model's own class
        (registered with the Auto classes on `import transferlab`)."""
        (standard_form(model) or model).save_pretrained(model_dir)
        self.processor.save(model_dir)

    @abstractmethod
    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        """Labelled examples of a file, read as the run read its eval data (`transferlab evaluate`)."""

    @property
    def input_fields(self) -> list[str]:
        """The fields of one raw input row (what `predict` and the service take), e.g. ["text"]."""
        return ["text"]

    @abstractmethod
    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        """Unlabelled examples of a file to predict on; every column of the file is kept."""

    @abstractmethod
    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        """Unlabelled examples from the command line (`predict RUN text ...`, QA's --question/--context)."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], frame: pd.DataFrame) -> list[dict]:
        """One prediction per row of `frame` (label and probabilities, entities, answer, generated text...)."""

    def line(self, row: dict, prediction: dict) -> str:
        """One printed prediction (the console form of `decode`'s dicts)."""
        return "\t".join(str(v) for v in prediction.values())


def concat_outputs(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch outputs joined; per-position arrays of different widths are right-padded (-100 for integers,
    0 for floats), since batches are padded to their own longest example."""
    if not chunks:
        return {}
    merged = {}
    for key in chunks[0]:
        arrays = [c[key] for c in chunks]
        width = max(a.shape[1] if a.ndim > 1 else 0 for a in arrays)
        if any(a.ndim > 1 and a.shape[1] != width for a in arrays):
            arrays = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                             constant_values=-100 if a.dtype.kind in "iu" else 0) for a in arrays]
        merged[key] = np.concatenate(arrays)
    return merged
