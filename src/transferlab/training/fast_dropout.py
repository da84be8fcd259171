"""Dropout and attention for training on CPUs, where torch's own are slow for the short inputs transfer learning
mostly sees.

torch draws a CPU dropout mask one element at a time from its Mersenne twister (2.2 ms for a 32×32×384 tensor, 18%
of a full fine-tuning step of MiniLM), and scaled-dot-product attention with dropout falls back to a math path
that draws its mask the same way. Here a mask comes from 16 random bits per element, drawn 64 at a time from the
same generator (so seeds, resumes and bit-identical reruns behave as before): 0.3 ms. And attention over at most
`MATH_ATTENTION_MAX_KEYS` keys runs as two plain matmuls while training: the CPU flash kernel's backward is 4–5×
slower there (32 tokens: 20 vs 4 ms per layer), while it wins from about 256 keys on, and its memory matters.

`FastCpuTraining` applies both for the length of a fit on a CPU model and puts the model back as it was.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from transferlab.training.events import Callback

ATTENTION = "transferlab_cpu"  # the attention implementation registered with transformers for CPU training
MATH_ATTENTION_MAX_KEYS = 128  # measured crossover: the math path is faster up to 128 keys, flash from 256
LEVELS = 1 << 16  # a mask element is 16 random bits: dropout probabilities are rounded to 1/65,536


class _BitsDropout(torch.autograd.Function):
    """Dropout whose mask compares 16 random bits with the rate; the kept values scale by the exact inverse
    of the kept share, so the expectation is unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
        dropped = round(p * LEVELS)
        keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - LEVELS // 2
        ctx.save_for_backward(keep)
        ctx.scale = LEVELS / (LEVELS - dropped)
        # the fused kernel of torch's own dropout backward computes x * keep * scale in one pass
        return torch.ops.aten.native_dropout_backward(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None


def bits_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of rate `p` with a mask of 16-bit draws (torch's own off the CPU, where its kernels are fused)."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or p >= 1:
        return nn.functional.dropout(x, p, training)
    return _BitsDropout.apply(x, p)


class BitsDropout(nn.Dropout):
    """`nn.Dropout` drawing its mask with `bits_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bits_dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs):
    """transformers' attention interface: softmax(QKᵀ)V as matmuls with `bits_dropout` while training over short
    inputs; otherwise transformers' SDPA attention."""
    if not module.training or key.shape[-2] > MATH_ATTENTION_MAX_KEYS or query.shape[1] != key.shape[1] \
            or getattr(module, "is_causal", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    weights = bits_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks SDPA reads


class FastCpuTraining(Callback):
    """For a fit on a CPU: every `nn.Dropout` becomes a `BitsDropout`, and transformers models that attend
    through SDPA use `attention`; the end of the fit (or its abort) restores both."""

    order = -50  # before the callbacks that train or evaluate

    def __init__(self):
        self._dropouts: list[tuple[nn.Module, str, nn.Dropout]] = []
        self._attention: list[PreTrainedModel] = []

    def on_fit_start(self, trainer) -> None:
        model = trainer.model
        if next(model.parameters()).device.type != "cpu":
            return
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Dropout:
                    self._dropouts.append((parent, name, child))
                    setattr(parent, name, BitsDropout(child.p, child.inplace))
        # outermost first: setting a model's implementation sets its submodels', which then no longer read "sdpa"
        for sub in model.modules():
            if isinstance(sub, PreTrainedModel) and sub.config._attn_implementation == "sdpa":
                sub.set_attn_implementation(ATTENTION)
                if sub.config._attn_implementation == ATTENTION:
                    self._attention.append(sub)

    def on_fit_end(self, trainer) -> None:
        for parent, name, original in self._dropouts:
            setattr(parent, name, original)
        for sub in self._attention:
            sub.set_attn_implementation("sdpa")
        self._dropouts, self._attention = [], []

    def on_fit_abort(self, trainer) -> None:
        self.on_fit_end(trainer)
