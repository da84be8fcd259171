"""Depthwise convolutions kept in fp32 while a CPU fit runs under bf16 autocast.

oneDNN's bf16 kernels for depthwise convolutions (one filter per channel: MobileNet, EfficientNet, Lite) are slow on
CPUs, above all their weight gradients, while the 1x1 convolutions around them, plain matrix products, gain from
bf16. One training step, batch 32 at 96 px, 2-core Xeon with AMX (fp32 / bf16 / bf16 with these in fp32):
EfficientNet-Lite0 339 / 501 / 312 ms, MobileNetV2 289 / 283 / 258 ms, HF EfficientNet-B0 5,434 / 4,856 / 4,053 ms.
`Fp32Depthwise` runs each depthwise convolution outside autocast on an fp32 input for the length of the fit and
then removes the override. Convolutions no gradient flows through (evaluation, the frozen-feature cache, a frozen
bottom) stay in bf16: forward alone, bf16 is faster (Lite0 features, batch 32 at 96 px: 36 ms, against 44 with
these in fp32 and 41 in fp32 with batch norms folded). The model's modules and parameter names never change, so
checkpoints stay the same.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn

from transferlab.training.events import Callback


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter group per input channel (and more than one channel)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _fp32_conv_forward(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                       ) -> torch.Tensor:
    if not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
        # no backward through it (evaluation, the cache, a frozen bottom): forward alone, bf16 is the faster
        return type(self)._conv_forward(self, x, weight, bias)
    with torch.autocast(x.device.type, enabled=False):
        return type(self)._conv_forward(self, x.float(), weight.float(), None if bias is None else bias.float())


def depthwise_in_fp32(model: nn.Module) -> list[nn.Conv2d]:
    """Make every depthwise convolution of `model` compute in fp32 under autocast where a gradient flows through
    it; returns them for `restore`."""
    convs = [m for m in model.modules() if is_depthwise(m)]
    for conv in convs:
        # an instance attribute over the class's method: a deep copy rebinds it to the copied module
        conv._conv_forward = MethodType(_fp32_conv_forward, conv)
    return convs


def restore(convs: list[nn.Conv2d]) -> None:
    """Undo `depthwise_in_fp32`."""
    for conv in convs:
        del conv._conv_forward


class Fp32Depthwise(Callback):
    """For a fit on a CPU under bf16 autocast: every depthwise convolution computes in fp32 where a gradient flows
    through it; the fit's end (or abort) restores them."""

    order = -50  # before the callbacks that train or evaluate

    def __init__(self):
        self._convs: list[nn.Conv2d] = []

    def on_fit_start(self, trainer) -> None:
        if trainer.amp_dtype is torch.bfloat16 and next(trainer.model.parameters()).device.type == "cpu":
            self._convs = depthwise_in_fp32(trainer.model)

    def on_fit_end(self, trainer) -> None:
        restore(self._convs)
        self._convs = []

    def on_fit_abort(self, trainer) -> None:
        self.on_fit_end(trainer)
