"""Training-only image augmentation with PIL (no torchvision here): random resized crop, horizontal flip, small
rotation and colour jitter per image; mixup and cutmix per batch, on pixel tensors with soft targets.

Every draw comes from a NumPy generator the caller seeds from the run's seed, the phase, the epoch and the example
(`example_rng`, `batch_rng`), so a seed gives the same batches, each epoch sees new variants, and a resumed run
replays exactly what the interrupted one would have drawn (nothing depends on which batches ran before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from pydantic import Field, field_validator, model_validator

from transferlab.config import ConfigSection

# torchvision's RandomResizedCrop defaults: aspect ratios drawn log-uniformly in [3/4, 4/3], 10 tries at a box
ASPECT_RATIOS = (3 / 4, 4 / 3)
CROP_TRIES = 10
# timm's default: with both mixup and cutmix on, each batch uses one of them, chosen at random
CUTMIX_SHARE = 0.5
_IMAGE, _BATCH = 0, 1  # spawn-key tags keeping the per-image and per-batch streams apart

PRESETS: dict[str, dict] = {
    "none": {},
    "light": {"flip": True, "crop_scale": (0.7, 1.0), "rotation": 10.0, "color_jitter": 0.2},
    "strong": {"flip": True, "crop_scale": (0.35, 1.0), "rotation": 15.0, "color_jitter": 0.4, "mixup": 0.2},
}


class ImageAugmentConfig(ConfigSection):
    """Training-only image augmentation (config `image.augment`): a preset, and any option given beside it wins."""

    preset: Literal["none", "light", "strong"] = Field(
        "none", description="light: flip, crop_scale [0.7, 1], rotation 10, color_jitter 0.2; strong: flip, "
                            "crop_scale [0.35, 1], rotation 15, color_jitter 0.4, mixup 0.2")
    flip: bool = Field(False, description="mirror each training image left-right with probability 0.5")
    crop_scale: tuple[float, float] | None = Field(
        None, description="random resized crop: [low, high] share of the image's area kept (aspect 3/4-4/3), resized "
                          "to the resolution; null = the evaluation framing (resize, centre crop)")
    rotation: float = Field(0.0, ge=0, le=180, description="rotate by a random angle in [-r, r] degrees")
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness, contrast, saturation x [1 - j, 1 + j]")
    mixup: float = Field(0.0, ge=0, le=10, description="mixup's Beta(alpha, alpha); 0 = off")
    cutmix: float = Field(0.0, ge=0, le=10, description="cutmix's Beta(alpha, alpha); 0 = off (with mixup too: "
                                                        "each batch uses one of them)")

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 1:
            raise ValueError("crop_scale must be two shares of the image's area, low then high, with 0 < low <= high "
                             "<= 1")
        return value

    @model_validator(mode="after")
    def _apply_preset(self) -> ImageAugmentConfig:
        for name, value in PRESETS[self.preset].items():
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self

    @property
    def per_image(self) -> bool:
        """True when each image is transformed (crop, flip, rotation or colour)."""
        return bool(self.flip or self.crop_scale or self.rotation or self.color_jitter)

    @property
    def mixes(self) -> bool:
        """True when batches are mixed (mixup or cutmix)."""
        return bool(self.mixup or self.cutmix)

    def describe(self) -> str:
        """The active options in a few words, e.g. 'flip, crop 0.7-1, rotation 10, colour jitter 0.2'; '' if none."""
        parts = ["flip"] if self.flip else []
        if self.crop_scale:
            parts.append(f"crop {self.crop_scale[0]:g}-{self.crop_scale[1]:g}")
        parts += [f"{name} {value:g}" for name, value in (("rotation", self.rotation),
                                                          ("colour jitter", self.color_jitter),
                                                          ("mixup", self.mixup), ("cutmix", self.cutmix)) if value]
        return ", ".join(parts)


def example_rng(seed: int, phase: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training example's augmentation in one epoch of one phase."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_IMAGE, phase, epoch, index)))


def batch_rng(seed: int, phase: int, epoch: int, indices: Sequence[int]) -> np.random.Generator:
    """The generator of one training batch's mixing (mixup / cutmix), from the examples it holds."""
    return np.random.default_rng(np.random.SeedSequence([seed, *indices], spawn_key=(_BATCH, phase, epoch)))


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
             ) -> tuple[float, float, float, float]:
    """A random box covering a `scale` share of the image's area at a random aspect ratio (torchvision's
    RandomResizedCrop); the largest centred box of an allowed ratio when 10 tries do not fit."""
    area = width * height
    log_ratio = (math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return left, top, left + w, top + h
    ratio = min(max(width / height, ASPECT_RATIOS[0]), ASPECT_RATIOS[1])
    w, h = (width, width / ratio) if width / height <= ratio else (height * ratio, height)
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def random_resized_crop(image: Image.Image, size: int, scale: tuple[float, float], rng: np.random.Generator,
                        resample: int) -> Image.Image:
    """A random crop (`crop_box`) resized to `size` x `size` in one resampling."""
    return image.resize((size, size), resample, box=crop_box(*image.size, scale, rng))


def rotate(image: Image.Image, degrees: float, rng: np.random.Generator) -> Image.Image:
    """Rotated by an angle drawn uniformly in [-degrees, degrees]; the uncovered corners take the mean colour of
    the image's border, so they blend into a plain background (black corners would be a cue no test image has)."""
    angle = rng.uniform(-degrees, degrees)
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    fill = tuple(int(v) for v in border.mean(axis=0).round())
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def jitter_colour(image: Image.Image, strength: float, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor drawn uniformly in [1 - s, 1 + s]."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(rng.uniform(max(0.0, 1 - strength), 1 + strength))
    return image


def augment_image(image: Image.Image, options: ImageAugmentConfig, rng: np.random.Generator) -> Image.Image:
    """One augmented variant of an RGB image already framed at the size the backbone sees (the order of the draws
    is fixed, so a generator gives one variant)."""
    if options.flip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if options.rotation:
        image = rotate(image, options.rotation, rng)
    if options.color_jitter:
        image = jitter_colour(image, options.color_jitter, rng)
    return image


def mix_batch(pixels: torch.Tensor, targets: torch.Tensor, options: ImageAugmentConfig, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of a batch: each image blended with (mixup) or pasted into (cutmix) another image of the
    batch, its class probabilities (`targets`, one-hot in) mixed in the same proportion; each row still sums to 1."""
    use_cutmix = options.cutmix > 0 and (options.mixup == 0 or rng.random() < CUTMIX_SHARE)
    alpha = options.cutmix if use_cutmix else options.mixup
    keep = float(rng.beta(alpha, alpha))  # the share of each image (and of its target) that stays its own
    partner = torch.from_numpy(rng.permutation(len(pixels)))
    if use_cutmix:
        height, width = pixels.shape[-2:]
        cut_h, cut_w = round(height * math.sqrt(1 - keep)), round(width * math.sqrt(1 - keep))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
        pixels = pixels.clone()
        pixels[..., top:bottom, left:right] = pixels[partner][..., top:bottom, left:right]
        keep = 1 - (bottom - top) * (right - left) / (height * width)  # the box clipped at the border
    else:
        pixels = keep * pixels + (1 - keep) * pixels[partner]
    return pixels, keep * targets + (1 - keep) * targets[partner]


TTA_MODES = {"flip": "the image and its mirror image",
             "crops": "the image, its mirror image and its four corner crops (7/8 of each side, resized back)"}
CORNER_CROP = 7 / 8


def test_time_views(pixels: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a batch of pixel tensors (N, C, H, W) that test-time augmentation `mode` averages over, the
    batch itself first."""
    views = [pixels, pixels.flip(-1)]
    if mode == "crops":
        height, width = pixels.shape[-2:]
        h, w = round(height * CORNER_CROP), round(width * CORNER_CROP)
        for top, left in ((0, 0), (0, width - w), (height - h, 0), (height - h, width - w)):
            corner = pixels[..., top:top + h, left:left + w]
            views.append(torch.nn.functional.interpolate(corner, size=(height, width), mode="bilinear",
                                                         align_corners=False))
    return views
