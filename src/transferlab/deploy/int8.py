"""PyTorch dynamic int8 of a model's Linear layers: what `--int8` on the torch backend applies at load time.

It has no int8 convolutions, so a model with convolutions (an image CNN) is refused with the way to its ONNX static
int8 form rather than served as an "int8" model whose convolutions still run in fp32."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from transferlab.errors import UserError

# the feed-forward output projection of each layer of a BERT-like encoder
FFN_OUTPUT = re.compile(r"layer\.\d+\.output\.dense$")
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def quantize_torch_model(model: nn.Module, backbone_prefix: str = "backbone.") -> nn.Module:
    """PyTorch dynamic int8 of the backbone's Linear layers (per-channel weights), on a copy.

    The feed-forward output projections stay fp32: PyTorch quantizes activations to 7 bits on x86, and their
    input (the GELU output) has outliers that leave too few levels for ordinary values (docs/deploy.md)."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if any(isinstance(module, CONVOLUTIONS) for module in model.modules()):
        raise UserError("PyTorch's dynamic int8 (--backend torch with --int8 or `quantize --backend torch`) "
                        "quantizes Linear layers only: this model's convolutions would stay fp32.",
                        "Use its ONNX int8 model, quantized statically with calibration images: `transferlab "
                        "quantize RUN` writes model/model.int8.onnx; serve or benchmark it with --backend onnx "
                        "--int8.")
    prefix = backbone_prefix.rstrip(".")
    backbone = getattr(model, prefix) if prefix else model
    spec = {name: per_channel_dynamic_qconfig for name, module in backbone.named_modules(prefix=prefix)
            if isinstance(module, nn.Linear) and not FFN_OUTPUT.search(name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)
