"""Weight change per layer group: relative L2 distance of the weights from where training started."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from transferlab.backbones.groups import LayerGroups


class WeightChange:
    """Keeps a CPU copy of the starting weights of the groups that will train, once, and measures
    ||w - w0|| / ||w0|| per group (groups that never train stay 0 and are not copied)."""

    def __init__(self, groups: LayerGroups, training: Iterable[str]):
        self.groups = groups
        training = set(training)
        # groups bottom to top, then the slices of groups that train (`layer.3.ffn@bias`)
        self.names = groups.names + sorted(training - set(groups.names))
        self.start = {name: [p.detach().to("cpu", torch.float32, copy=True) for _, p in groups[name].params]
                      for name in self.names if name in training}

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Relative change of every group, bottom to top."""
        change = {}
        for group in self.names:
            start = self.start.get(group)
            if start is None:
                change[group] = 0.0
                continue
            params = [p for _, p in self.groups[group].params]
            diff = torch.stack([torch.linalg.vector_norm(p.detach().float().cpu() - w0)
                                for p, w0 in zip(params, start, strict=True)])
            norm = torch.stack([torch.linalg.vector_norm(w0) for w0 in start])
            change[group] = float(torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(norm).clamp(min=1e-12))
        return change
