"""Which autocast dtype a precision setting means on the hardware at hand (precision.py)."""

import torch

from transferlab.precision import autocast_dtype


def test_auto_precision_is_bf16_on_a_bf16_cpu_and_fp32_elsewhere(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16 and autocast_dtype("fp32", cpu) is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16  # asked for by name: given
