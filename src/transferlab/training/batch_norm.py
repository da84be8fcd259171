"""Re-estimate the running statistics of the batch-norm layers that learn, with the weights they have now.

During training a batch-norm layer normalises with the batch's own statistics and keeps a running average for
evaluation; while the weights move fast, that average trails them. A pretrained network fine-tuned gently barely
notices; a network trained from scratch (or a CNN's top stages at lr 1e-3) can evaluate to a single class although
its training batches are well classified. Recomputing the statistics on training batches just before evaluating
("precise BN") removes the lag at the cost of a few forward passes, and changes nothing for models without
batch norm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm


def learning_batch_norms(module: torch.nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of `module` whose affine weights learn (frozen ones keep pretraining's statistics)."""
    return [m for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and any(p.requires_grad for p in m.parameters())]


def sample_indices(n: int, size: int, seed: int) -> list[int]:
    """`size` distinct example indices out of `n`, sorted, from a generator of their own (the global RNG that
    dropout uses is untouched, so a resumed run stays identical)."""
    if size >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size, replace=False).tolist())


@torch.no_grad()
def recalibrate(module: torch.nn.Module, batches: Iterable[dict], forward: Callable[[dict], object]) -> int:
    """Reset the learning batch-norm layers' statistics and average them (equal weights) over `batches`, every
    other layer in eval mode (no dropout, no stochastic depth). Returns how many layers were re-estimated."""
    layers = learning_batch_norms(module)
    if not layers:
        return 0
    modes = {m: m.training for m in module.modules()}
    momenta = [layer.momentum for layer in layers]
    module.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches given
        layer.train()
    for batch in batches:
        forward(batch)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    for m, training in modes.items():
        m.training = training
    return len(layers)
