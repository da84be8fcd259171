"""Mixed precision: which autocast dtype a precision setting means on the hardware at hand."""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting: bf16 where the hardware runs it natively, else fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return torch.bfloat16
    return None


def native_bf16(device: torch.device) -> bool:
    """Whether `auto` precision runs bf16 on this device (CUDA with bf16, or a CPU with avx512_bf16)."""
    return autocast_dtype("auto", device) is torch.bfloat16
