"""The backbone protocol: what every family of pretrained networks tells the rest of transferlab.

A family knows how to load its networks offline, how to turn raw inputs into features (its `Processor`: a
tokenizer, an image transform), how its parameters split into typed layer groups, and — where it can — how to run
from a level upwards, which the frozen-feature cache needs. Nothing above this layer names token ids, tokenizers or
hidden sizes: tasks ask their processor, the trainer asks the task.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from transferlab.backbones.groups import GroupRule
from transferlab.backbones.weights import check_weights

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class Processor(Protocol):
    """Turns raw inputs into model features and lists of features into padded batches."""

    modality: str  # "text" | "image": tasks check they were given the kind of input they read

    def length(self, feature: dict) -> int:
        """The cost of one feature (tokens of a text; 1 for fixed-size inputs): what length grouping sorts by."""

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """A batch of the model inputs of `features`, padded to the longest."""

    def save(self, model_dir: Path) -> None:
        """Write what loading the processor from `model_dir` needs (tokenizer files, preprocessor config)."""


@dataclass(frozen=True)
class CacheStack:
    """How to run a backbone from level k up, for the frozen-feature cache.

    `capture(k)` is the module whose forward output is the state entering level k; `rows(state, inputs)` splits
    a captured batch into one tensor per example (unpadded); `batch(rows)` joins rows into the keyword inputs of
    `run(state, k)`, which runs levels k.. and returns (backbone output, attention mask or None).
    """

    capture: Callable[[int], nn.Module]
    rows: Callable[[torch.Tensor, dict[str, torch.Tensor]], list[torch.Tensor]]
    batch: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]
    run: Callable[[dict[str, torch.Tensor], int], tuple[Any, torch.Tensor | None]]


class BackboneFamily(ABC):
    """One family of pretrained networks (Hugging Face text encoders, encoder-decoders, image models...)."""

    name: str
    modality: str

    @abstractmethod
    def model_types(self) -> list[str]:
        """The architectures (config `model_type`s) this family knows."""

    def accepts(self, model_type: str) -> bool:
        """Whether a config's `model_type` belongs to this family."""
        return model_type in self.model_types()

    def owns(self, module: nn.Module) -> bool:
        """Whether a backbone module is of this family."""
        return self.accepts(self.architecture(module))

    def architecture(self, module: nn.Module) -> str:
        """The architecture name of a backbone module (errors and metadata show it)."""
        return getattr(getattr(module, "config", None), "model_type", type(module).__name__)

    def bundled(self) -> dict[str, Path]:
        """Bundled models by name (installed with a package, loaded offline)."""
        return {}

    def find(self, name: str, max_length: int | None) -> Backbone | None:
        """The backbone `name` means to this family (a bundled name or a directory of its kind), else None."""
        path = self.bundled().get(name) or Path(name).expanduser()
        if not (path / "config.json").is_file() or not any((path / f).is_file() for f in WEIGHT_FILES):
            return None
        model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
        if not self.accepts(model_type):
            return None
        check_weights(path)
        return Backbone(name, self, path, self.processor(path, max_length))

    @abstractmethod
    def rules(self, module: nn.Module) -> list[GroupRule]:
        """How the parameters of a backbone module of this family split into typed groups."""

    @abstractmethod
    def load(self, model_dir: Path) -> nn.Module:
        """The pretrained network of a model directory, from local files only (safetensors preferred)."""

    @abstractmethod
    def processor(self, model_dir: Path, max_length: int | None) -> Processor:
        """The input processor saved with a model directory."""

    def cache_stack(self, module: nn.Module) -> CacheStack | None:
        """How to run `module` from a level up (None: the frozen-feature cache keeps only pooled features)."""
        return None

    def randomize(self, module: nn.Module) -> None:
        """Re-initialise a backbone's weights at random (the from-scratch baseline of `--init random`)."""
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


@dataclass
class Backbone:
    """A pretrained backbone ready to build task models on: its family, directory, processor and display name."""

    name: str
    family: BackboneFamily
    model_dir: Path
    processor: Processor

    def load(self) -> nn.Module:
        return self.family.load(self.model_dir)
