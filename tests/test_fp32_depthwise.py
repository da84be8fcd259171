"""Depthwise convolutions computed in fp32 during a CPU fit under bf16 autocast (training/fp32_depthwise.py)."""

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from transferlab.training.fp32_depthwise import Fp32Depthwise, is_depthwise


class Block(nn.Module):
    """An inverted-residual block as MobileNet and EfficientNet build it: 1x1, depthwise 3x3, 1x1."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(8, 32, 1, bias=False)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=True)
        self.norm = nn.BatchNorm2d(32)
        self.project = nn.Conv2d(32, 8, 1)
        self.seen = {}
        for name in ("expand", "depthwise", "project"):
            getattr(self, name).register_forward_hook(lambda m, i, o, name=name: self.seen.update({name: (i[0], o)}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.relu6(self.norm(self.depthwise(self.expand(x)))))


def run(block: nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return block(torch.randn(4, 8, 6, 6))


def test_depthwise_convolutions_compute_in_fp32_under_bf16_for_the_fit_only():
    torch.manual_seed(0)
    block, callback = Block(), Fp32Depthwise()
    run(block)
    assert block.seen["depthwise"][1].dtype == torch.bfloat16  # autocast's own choice
    names = [n for n, _ in block.named_parameters()]
    trainer = SimpleNamespace(model=block, amp_dtype=torch.bfloat16)
    callback.on_fit_start(trainer)
    out = run(block)
    inputs, output = block.seen["depthwise"]
    assert inputs.dtype == torch.bfloat16 and output.dtype == torch.float32
    conv = block.depthwise
    assert torch.equal(output, F.conv2d(inputs.float(), conv.weight, conv.bias, padding=1, groups=32))
    assert block.seen["expand"][1].dtype == block.seen["project"][1].dtype == torch.bfloat16  # 1x1: still bf16
    with torch.no_grad():  # evaluation and cache passes: no weight gradient to pay for, bf16 is the faster
        run(block)
    assert block.seen["depthwise"][1].dtype == torch.bfloat16
    block.depthwise.requires_grad_(False)  # frozen, and nothing below it learns: no backward through it either
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.depthwise(torch.randn(4, 32, 6, 6)).dtype == torch.bfloat16
        assert block.depthwise(torch.randn(4, 32, 6, 6, requires_grad=True)).dtype == torch.float32  # learns below
    block.depthwise.requires_grad_(True)
    out.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert [n for n, _ in block.named_parameters()] == names  # checkpoints keep their names
    block.seen.clear()  # activations of the graph: not copyable
    twin = copy.deepcopy(block)  # e.g. a copy of the best weights: its override runs its own convolution
    assert twin.depthwise._conv_forward.__self__ is twin.depthwise
    callback.on_fit_end(trainer)
    assert "_conv_forward" not in vars(conv)
    run(block)
    assert block.seen["depthwise"][1].dtype == torch.bfloat16


def test_nothing_changes_without_bf16_autocast_and_only_depthwise_convolutions_count():
    block = Block()
    Fp32Depthwise().on_fit_start(SimpleNamespace(model=block, amp_dtype=None))
    assert "_conv_forward" not in vars(block.depthwise)
    assert is_depthwise(block.depthwise) and not is_depthwise(block.expand)
    assert not is_depthwise(nn.Conv2d(32, 32, 3, groups=4))  # grouped, not one filter per channel
