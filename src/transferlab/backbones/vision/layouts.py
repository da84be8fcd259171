"""Where the parts of each vision architecture are: stem, blocks grouped into stages, top; and how to finish a
forward pass from the last block's output.

One `Layout` per architecture gives the typed layer groups (`stem`, `stage.i`, the top conv or norm with the last
stage; ViT: `embeddings`, `layer.i.attention`, `layer.i.ffn`, `norm`) and the frozen-feature cache's stack (capture
the output of stage k-2, run stages k-1.. and the pooling). Stages are the architecture's own: the resolution /
width stages of the original papers, given per block where the modules are one flat list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention as PooledOutput

from transferlab.backbones.base import CacheStack
from transferlab.backbones.groups import GroupRule

# the stage of each MobileNet block: V1's 13 depthwise-separable blocks by output width (64, 128, 256, 512,
# 1024); V2's 16 inverted residuals after the stem by output width (24, 32, 64, 96, 160, 320)
MOBILENET_V1_STAGES = (0, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4)
MOBILENET_V2_STAGES = (0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5)


@dataclass(frozen=True)
class Layout:
    """The parts of one backbone module, in forward order.

    `blocks` are (module path, stage) pairs: running them in order on the stem's output and then `finish` is the
    backbone's forward pass. `top` is the regex of the parameters after the last block (a final conv or norm, at
    the last stage's level) and `top_kind` its kind. `rules`, where given, replace the stage rules (ViT's layers).
    """

    stem: str | None
    blocks: list[tuple[str, int]]
    finish: Callable[[torch.Tensor], PooledOutput]
    features: int
    top: str | None = None
    top_kind: str = "block"
    rules: list[GroupRule] | None = None

    def group_rules(self) -> list[GroupRule]:
        """Typed groups: `stem` (input level), `stage.i` (one level each), the top with the last stage."""
        if self.rules is not None:
            return self.rules
        last = f"stage.{self.blocks[-1][1]}"
        rules = [GroupRule(self.stem, "stem", "stem", level="input")] if self.stem else []
        rules += [GroupRule(rf"^{re.escape(path)}\.", f"stage.{s}", "block", index=s, unit=f"stage.{s}")
                  for path, s in self.blocks]
        if self.top:
            name = "norm" if self.top_kind == "norm" else "top"
            rules.append(GroupRule(self.top, name, self.top_kind, level="top", unit=last))
        return rules

    def cache_stack(self, module: nn.Module) -> CacheStack:
        """Capture the output of the last block of stage k-2; run the blocks of stages k-1.. and `finish`."""
        blocks = [(module.get_submodule(path), stage) for path, stage in self.blocks]

        def capture(level: int) -> nn.Module:
            return [block for block, stage in blocks if stage == level - 2][-1]

        def run(state: dict[str, torch.Tensor], level: int) -> tuple[PooledOutput, None]:
            hidden = state["hidden"]
            for block, stage in blocks:
                if stage >= level - 1:
                    hidden = block(hidden)
            return self.finish(hidden), None

        return CacheStack(capture=capture, rows=lambda hidden, inputs: list(hidden.unbind(0)),
                          batch=lambda rows: {"hidden": _channels_last(torch.stack(rows))}, run=run)


def _channels_last(hidden: torch.Tensor) -> torch.Tensor:
    """Cached feature maps (N, C, H, W) as channels-last, like the pixel batches: stacked rows come out channels-first,
    on which the convolutions above the cache ran about 1.4x slower (2-core CPU, Lite0 stages 4-6 at 96 px); ViT's
    (N, tokens, width) states stay as they are."""
    return hidden.contiguous(memory_format=torch.channels_last) if hidden.dim() == 4 else hidden


def _pooled(hidden: torch.Tensor, pooled: torch.Tensor) -> PooledOutput:
    return PooledOutput(last_hidden_state=hidden, pooler_output=pooled)


def _resnet(m: nn.Module) -> Layout:
    return Layout(r"^embedder\.", [(f"encoder.stages.{i}", i) for i in range(len(m.encoder.stages))],
                  lambda h: _pooled(h, m.pooler(h)), m.config.hidden_sizes[-1])


def _convnext(m: nn.Module) -> Layout:
    return Layout(r"^embeddings\.", [(f"encoder.stages.{i}", i) for i in range(len(m.encoder.stages))],
                  lambda h: _pooled(h, m.layernorm(h.mean([-2, -1]))), m.config.hidden_sizes[-1],
                  top=r"^layernorm\.", top_kind="norm")


def _mean_pool(m: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return torch.flatten(m.pooler(h), 1) if m.pooler is not None else h.mean((2, 3))


def _mobilenet_v1(m: nn.Module) -> Layout:
    blocks = [(f"layer.{2 * b + i}", stage) for b, stage in enumerate(MOBILENET_V1_STAGES) for i in (0, 1)]
    return Layout(r"^conv_stem\.", blocks, lambda h: _pooled(h, _mean_pool(m, h)),
                  m.layer[-1].convolution.out_channels)


def _mobilenet_v2(m: nn.Module) -> Layout:
    def finish(h: torch.Tensor) -> PooledOutput:
        h = m.conv_1x1(h)
        return _pooled(h, _mean_pool(m, h))

    return Layout(r"^conv_stem\.", [(f"layer.{i}", s) for i, s in enumerate(MOBILENET_V2_STAGES)], finish,
                  m.conv_1x1.convolution.out_channels, top=r"^conv_1x1\.")


def _efficientnet(m: nn.Module) -> Layout:
    config = m.config
    stages = [s for s, n in enumerate(config.num_block_repeats) for _ in range(math.ceil(config.depth_coefficient * n))]
    encoder = m.encoder

    def finish(h: torch.Tensor) -> PooledOutput:
        h = encoder.top_activation(encoder.top_bn(encoder.top_conv(h)))
        return _pooled(h, m.pooler(h).reshape(h.shape[:2]))

    return Layout(r"^embeddings\.", [(f"encoder.blocks.{i}", s) for i, s in enumerate(stages)], finish,
                  config.hidden_dim, top=r"^encoder\.top_")


def _vit(m: nn.Module) -> Layout:
    last = len(m.layers) - 1
    rules = [GroupRule(r"^embeddings\.", "embeddings", "embeddings", level="input"),
             GroupRule(r"^layers\.(\d+)\.(?:layernorm_before|attention)\.", "layer.{0}.attention", "attention",
                       unit="layer.{0}"),
             GroupRule(r"^layers\.(\d+)\.(?:layernorm_after|mlp)\.", "layer.{0}.ffn", "ffn", unit="layer.{0}"),
             GroupRule(r"^layernorm\.", "norm", "norm", level="top", unit=f"layer.{last}"),
             GroupRule(r"^pooler\.", "pooler", "pooler", level="top", unit=f"layer.{last}")]
    # no pooled vector: the head reads the class token after the final norm (what ViTForImageClassification does)
    return Layout(None, [(f"layers.{i}", i) for i in range(last + 1)],
                  lambda h: PooledOutput(last_hidden_state=m.layernorm(h), pooler_output=None),
                  m.config.hidden_size, rules=rules)


def _efficientnet_lite(m: nn.Module) -> Layout:
    blocks = [(f"stages.{s}.{j}", s) for s, stage in enumerate(m.stages) for j in range(len(stage))]
    return Layout(r"^stem\.", blocks, m.finish, m.config.head_channels, top=r"^top\.")


def _vgg(m: nn.Module) -> Layout:
    widths = [layer.out_channels for layer in m.features if isinstance(layer, nn.Conv2d)]
    return Layout(None, [(f"features.{i}", b) for i, b in enumerate(m.block_of_layer())], m.finish, widths[-1])


LAYOUTS: dict[str, Callable[[nn.Module], Layout]] = {
    "resnet": _resnet, "convnext": _convnext, "mobilenet_v1": _mobilenet_v1, "mobilenet_v2": _mobilenet_v2,
    "efficientnet": _efficientnet, "vit": _vit, "efficientnet_lite": _efficientnet_lite, "vgg": _vgg,
}


def layout_of(module: nn.Module) -> Layout:
    return LAYOUTS[module.config.model_type](module)


def pooled_features(output) -> torch.Tensor:
    """One feature vector per image (batch, features) from a vision backbone's output: its pooled output,
    flattened, or (ViT) the class token after the final norm."""
    pooled = getattr(output, "pooler_output", None)
    return output.last_hidden_state[:, 0] if pooled is None else pooled.flatten(1)


def feature_size(module: nn.Module) -> int:
    """The size of the vectors `pooled_features` returns for a backbone module."""
    return layout_of(module).features


def prepare(module: nn.Module) -> nn.Module:
    """A loaded or built backbone as tasks use it: ViT's pooler (a dense layer ImageNet classifiers do not use,
    so it would never get a gradient) is dropped."""
    if module.config.model_type == "vit":
        module.pooler = None
    return module


def build_backbone(config: PretrainedConfig) -> nn.Module:
    """An untrained backbone of `config`'s architecture (what a saved task model's weights are loaded into)."""
    return prepare(AutoModel.from_config(config))
