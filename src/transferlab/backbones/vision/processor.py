"""The input processor of vision backbones: PIL images -> normalised pixel tensors at the backbone's resolution.

The resizing, cropping and normalisation are those of a transformers image processor (its PIL backend: no
torchvision), read from the model directory's preprocessor_config.json or made from the architecture's defaults, so
a saved model directory loads in `transformers.pipeline("image-classification")` with the same preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, BaseImageProcessor, BitImageProcessorPil

from transferlab.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC, BILINEAR = 3, 2  # PIL resampling codes, as preprocessor_config.json stores them


@dataclass(frozen=True)
class ImageDefaults:
    """The evaluation transform of an architecture without a preprocessor config: resize the shorter side to
    `resize`, crop the centre `resolution` square, normalise with `mean` / `std` (on the 0..1 scale)."""

    resolution: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resample: int = BILINEAR

    def processor(self) -> BaseImageProcessor:
        return BitImageProcessorPil(size={"shortest_edge": self.resize},
                                    crop_size={"height": self.resolution, "width": self.resolution},
                                    image_mean=list(self.mean), image_std=list(self.std), resample=self.resample)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of any PIL image: transparency composited on white, 16-bit and float grey stretched to 8 bits,
    palette, grey, CMYK and the other modes converted by PIL."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # PIL's own conversion clips these to 0..255, which turns most 16-bit X-rays white: stretch instead
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


class ImageProcessor:
    """A transformers image processor behind the `Processor` protocol: one feature {"pixel_values": (C, H, W)} per
    image, batches stacked, saved as preprocessor_config.json."""

    modality = "image"
    input_names = ["pixel_values"]  # the tensors a batch holds for the model (exported graphs take them in order)
    input_axes = {0: "batch", 2: "height", 3: "width"}  # what may vary between batches (exported graphs keep it)

    def __init__(self, image_processor: BaseImageProcessor):
        self.image_processor = image_processor

    def resized(self, size: int | None) -> ImageProcessor:
        """The same transform at `size` x `size` (None: unchanged), keeping the resize-to-crop ratio; what a model
        trained at that size is saved with."""
        if size is None or size == self.resolution:
            return self
        fields = {k: v for k, v in self.image_processor.to_dict().items()
                  if k not in ("image_processor_type", "processor_class")}
        return ImageProcessor(type(self.image_processor)(**{**fields, **self._sized(size)}))

    @property
    def resolution(self) -> int:
        """The side of the square the backbone sees."""
        p = self.image_processor
        if getattr(p, "do_center_crop", False) and p.crop_size is not None:
            return int(p.crop_size.height)
        return int(p.size.shortest_edge or p.size.height)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.image_processor.image_mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.image_processor.image_std)

    def encode(self, images: list[Image.Image], size: int | None = None) -> list[dict]:
        """The pixel tensor of each image at the backbone's resolution, or at `size` x `size` (progressive resizing)
        with the same resize-to-crop ratio."""
        if not images:
            return []
        overrides = {} if size is None or size == self.resolution else self._sized(size)
        pixels = self.image_processor([to_rgb(image) for image in images], return_tensors="pt", **overrides)
        return [{"pixel_values": p} for p in pixels["pixel_values"]]

    def frame(self, images: list[Image.Image], size: int | None = None) -> list[Image.Image]:
        """RGB images resized and cropped as `encode` frames them, not yet normalised (what augmentation starts
        from when it crops nothing itself)."""
        overrides = {} if size is None or size == self.resolution else self._sized(size)
        arrays = self.image_processor([to_rgb(image) for image in images], return_tensors="np", do_rescale=False,
                                      do_normalize=False, **overrides)["pixel_values"]
        return [Image.fromarray(np.moveaxis(np.asarray(a).clip(0, 255).round().astype(np.uint8), 0, -1))
                for a in arrays]

    def normalise(self, images: list[Image.Image]) -> list[dict]:
        """The pixel tensors of images already at the size the backbone sees (augmented ones): normalised only."""
        pixels = self.image_processor([to_rgb(image) for image in images], return_tensors="pt", do_resize=False,
                                      do_center_crop=False)
        return [{"pixel_values": p} for p in pixels["pixel_values"]]

    @property
    def resample(self) -> int:
        """The PIL resampling filter of the resize (what a random resized crop uses too)."""
        return int(getattr(self.image_processor, "resample", None) or BILINEAR)

    def _sized(self, size: int) -> dict:
        p = self.image_processor
        if getattr(p, "do_center_crop", False) and p.crop_size is not None:
            scale = size / self.resolution
            resize = {k: round(v * scale) for k, v in (("shortest_edge", p.size.shortest_edge),
                                                        ("height", p.size.height), ("width", p.size.width)) if v}
            return {"size": resize, "crop_size": {"height": size, "width": size}}
        if p.size.shortest_edge:
            return {"size": {"shortest_edge": size}}  # ConvNeXt's processor crops by its own crop_pct
        return {"size": {"height": size, "width": size}}

    def length(self, feature: dict) -> int:
        return 1

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """The batch of `features`: pixel values stacked (every image has the same size), labels if present."""
        batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def save(self, model_dir: Path) -> None:
        self.image_processor.save_pretrained(model_dir)


def load_image_processor(model_dir: Path, defaults: ImageDefaults) -> ImageProcessor:
    """The processor saved in `model_dir` (preprocessor_config.json), else the architecture's `defaults`."""
    config = model_dir / "preprocessor_config.json"
    if not model_dir.is_dir() or not config.is_file():
        return ImageProcessor(defaults.processor())
    try:
        return ImageProcessor(AutoImageProcessor.from_pretrained(str(model_dir)))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"Could not read the image preprocessing of '{model_dir}' ({config.name}): {err}.",
                        "Fix or delete preprocessor_config.json (without it the architecture's defaults are used).") \
            from err
