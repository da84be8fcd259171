"""Image classification: an image-folder tree, a table of image paths or a bundled set in; a label per image out.

Labels, outputs, metrics and decoding are those of text classification (this task is that task over images): only
reading the data and turning examples into pixels differ. Pixels are decoded per batch (`collate`), so a run holds
paths or small arrays in memory, not a tensor per image; with `image.augment`, training batches are augmented
(`collate_train`: evaluation and prediction batches never are), at the phase's `resolution` where a plan sets one;
`tta_forward` averages a saved model's probabilities over flipped (and cropped) views.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
from pydantic import Field

from transferlab.backbones.base import Backbone, Processor
from transferlab.backbones.vision.processor import to_rgb
from transferlab.config import ConfigSection, ModelConfig, RunConfig, register_section
from transferlab.data.image_augment import (
    TTA_MODES,
    ImageAugmentConfig,
    augment_image,
    batch_rng,
    example_rng,
    mix_batch,
    random_resized_crop,
    test_time_views,
)
from transferlab.data.images import (
    BUNDLED_IMAGES,
    image_folder,
    is_bundled_images,
    load_bundled_images,
    open_image,
    resolve_paths,
    unlabelled_images,
)
from transferlab.data.sources import check_eval_labels, label_names
from transferlab.errors import UserError
from transferlab.models.build import build_task_model
from transferlab.models.image_classification import TransferlabForImageClassification
from transferlab.tasks.base import RunData, TrainingDraw
from transferlab.tasks.classification import ClassificationTask
from transferlab.tasks.table import read_columns, train_and_eval


class ImageConfig(ConfigSection):
    """Options of the image tasks (config section `image:`)."""

    path_column: str = Field("path", description="tables: the column of image paths (relative to the table)")
    resolution: int | None = Field(None, ge=16, le=2048, description="side of the square the backbone sees; None = "
                                                                     "the backbone's own (224 for Lite0)")
    max_pixels: int | None = Field(None, ge=1, description="largest image (width x height) decoded; None = PIL's "
                                                           "decompression-bomb limit (89,478,485)")
    augment: ImageAugmentConfig = Field(ImageAugmentConfig(), description="training-only augmentation (a preset "
                                                                          "and/or its options)")


register_section("image", ImageConfig)


class ImageClassificationTask(ClassificationTask):
    """One label per image; the examples' `image` column holds a path or a uint8 array, `path` what is shown."""

    name = "image-classification"
    pipeline_tag = "image-classification"
    modality = "image"
    augmentable = False  # text augmentation: images have their own (image.augment)
    tta_modes = TTA_MODES
    # a CNN's early activations at 128 images no longer fit in a CPU's cache: 32 ran the frozen stages of
    # EfficientNet-Lite0 1.6x faster (8.3 -> 5.3 ms per 96 px image on 2 cores)
    eval_batch_size = 32

    def __init__(self, label_names: list[str], processor: Processor, options: ImageConfig):
        super().__init__(label_names, processor.resized(options.resolution))
        self.options = options

    # ---- training ----------------------------------------------------------------------------------
    @classmethod
    def load_data(cls, cfg: RunConfig) -> RunData:
        train, evaluation = train_and_eval(cfg, lambda source: read_images(source, cfg), stratify=True)
        labels = label_names(train)
        if len(labels) < 2:
            raise UserError(f"{cfg.data.train} has a single class ({labels[0]!r}): a classifier needs at least two.",
                            "Add a folder (or rows) of at least one other class.")
        if cfg.data.eval:
            check_eval_labels(labels, evaluation["label"], cfg.data.eval)
        return RunData(train, evaluation, labels)

    @classmethod
    def for_data(cls, cfg: RunConfig, data: RunData, processor: Processor) -> ImageClassificationTask:
        return cls(data.labels, processor, cfg.section("image"))

    @classmethod
    def for_saved(cls, model_dir: Path, config: dict, run_cfg: RunConfig, processor: Processor
                  ) -> ImageClassificationTask:
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        # the saved processor already has the trained resolution
        return cls(labels, processor, run_cfg.section("image").model_copy(update={"resolution": None}))

    def build_model(self, backbone: Backbone, model_cfg: ModelConfig) -> torch.nn.Module:
        return build_task_model(
            backbone, TransferlabForImageClassification, task=self.name, num_labels=len(self.label_names),
            id2label=dict(enumerate(self.label_names)), label2id=dict(self.label_to_id),
            head_dropout=model_cfg.head_dropout, backbone_dropout=model_cfg.backbone_dropout)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return TransferlabForImageClassification.from_pretrained(str(model_dir)).eval()

    def encode(self, frame: pd.DataFrame) -> list[dict]:
        labels = self.targets(frame) if "label" in frame else None
        return [{"_image": image, **({"labels": labels[i]} if labels else {})}
                for i, image in enumerate(frame["image"])]

    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Decode, convert to RGB, resize and normalise the images of one batch."""
        return self._batch(self.processor.encode(self._images(features)), features)

    def collate_train(self, features: list[dict], indices: list[int], draw: TrainingDraw) -> dict[str, torch.Tensor]:
        """A training batch at the phase's resolution, augmented as `image.augment` says: each image from a generator
        of (seed, phase, epoch, its position), the batch's mixing from one of (seed, phase, epoch, its positions)."""
        options, images = self.options.augment, self._images(features)
        if not options.per_image:
            batch = self._batch(self.processor.encode(images, draw.resolution), features)
        else:
            rngs = [example_rng(draw.seed, draw.phase, draw.epoch, i) for i in indices]
            if options.crop_scale:
                size = draw.resolution or self.processor.resolution
                framed = [random_resized_crop(to_rgb(image), size, options.crop_scale, rng, self.processor.resample)
                          for image, rng in zip(images, rngs, strict=True)]
            else:
                framed = self.processor.frame(images, draw.resolution)
            augmented = [augment_image(image, options, rng) for image, rng in zip(framed, rngs, strict=True)]
            batch = self._batch(self.processor.normalise(augmented), features)
        if options.mixes and "labels" in batch:
            targets = torch.nn.functional.one_hot(batch["labels"], len(self.label_names)).float()
            pixels, batch["labels"] = mix_batch(batch["pixel_values"], targets, options,
                                                batch_rng(draw.seed, draw.phase, draw.epoch, indices))
            batch["pixel_values"] = pixels.contiguous(memory_format=torch.channels_last)
        return batch

    def training_variation(self) -> str:
        options = self.options.augment
        return f"image.augment ({options.describe()}) changes the training images" \
            if options.per_image or options.mixes else ""

    def tta_forward(self, forward: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor],
                    mode: str) -> SimpleNamespace:
        """Logits whose softmax is the mean of the class probabilities over the views (the log of that mean)."""
        probabilities = [torch.as_tensor(forward({**inputs, "pixel_values": view}).logits).float().softmax(-1)
                         for view in test_time_views(inputs["pixel_values"], mode)]
        return SimpleNamespace(logits=torch.stack(probabilities).mean(0).log())

    def _images(self, features: list[dict]) -> list:
        return [open_image(f["_image"], self.options.max_pixels) for f in features]

    def _batch(self, encoded: list[dict], features: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.processor.pad(encoded)
        # channels-last images make the convolutions run channels-last (faster on CPU, above all under bf16)
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    # ---- a saved model ------------------------------------------------------------------------------
    def read_labelled(self, source: str, run_cfg: RunConfig) -> pd.DataFrame:
        frame = read_images(source, run_cfg)
        check_eval_labels(self.label_names, frame["label"], source)
        return frame

    @property
    def input_fields(self) -> list[str]:
        return ["image"]

    def read_inputs(self, source: Path, run_cfg: RunConfig) -> pd.DataFrame:
        """An image file, a folder of images, or a table with the run's path column."""
        if source.is_dir() or source.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
            frame = unlabelled_images(source, self.options.max_pixels)
        else:
            column = run_cfg.section("image").path_column
            table = read_columns(str(source), {"path": (column, "image.path_column")})
            frame = resolve_paths(table, source, self.options.max_pixels, column)
        frame.attrs["input_columns"] = ["path"]
        return frame

    def inputs_from_args(self, values: list[str], options: dict) -> pd.DataFrame:
        if not values:
            raise UserError("predict: no images given.", "Pass image files or folders as arguments, or --input.")
        frames = [unlabelled_images(Path(v), self.options.max_pixels) for v in values]
        frame = pd.concat(frames, ignore_index=True)
        frame.attrs["input_columns"] = ["path"]
        return frame

    def line(self, row: dict, prediction: dict) -> str:
        return f"{prediction['label']}\t{prediction['score']:.4f}\t{row['path']}"


def read_images(source: str, cfg: RunConfig) -> pd.DataFrame:
    """Labelled images (`image`, `path`, `label`) of a bundled set, an image-folder tree or a table of paths."""
    options = cfg.section("image")
    if is_bundled_images(source):
        return load_bundled_images(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return image_folder(path, options.max_pixels)
    if not path.exists():
        raise UserError(f"Image data '{source}' is neither a bundled set ({', '.join(BUNDLED_IMAGES)}), a folder nor "
                        "a file.", "Pass an image-folder tree (one sub-folder per class), a CSV/JSONL/Parquet table "
                        "with a path and a label column, or a bundled name.")
    column = options.path_column
    table = read_columns(source, {"path": (column, "image.path_column"),
                                  "label": (cfg.data.label_column, "data.label_column")})
    table["label"] = table["label"].astype(str)
    return resolve_paths(table, path, options.max_pixels, column)

