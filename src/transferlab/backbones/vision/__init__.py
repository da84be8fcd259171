"""Vision backbones: transformers' image models, EfficientNet-Lite (bundled ImageNet weights) and VGG, with their
image processor. What tasks use: `ImageProcessor` (PIL images -> pixel_values), `pooled_features` / `feature_size`
(one vector per image), `build_backbone` (an untrained backbone of a saved config). Importing this package
registers EfficientNet-Lite and VGG with the transformers Auto classes."""

from transferlab.backbones.vision.family import VisionFamily
from transferlab.backbones.vision.layouts import build_backbone, feature_size, pooled_features
from transferlab.backbones.vision.processor import ImageProcessor, to_rgb

__all__ = ["ImageProcessor", "VisionFamily", "build_backbone", "feature_size", "pooled_features", "to_rgb"]
