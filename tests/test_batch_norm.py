"""Precise batch-norm statistics (training/batch_norm.py): re-estimated for the layers that learn, from the batches
given, with every other layer's mode and the momentum left as they were."""

import torch
from torch import nn

from transferlab.training.batch_norm import learning_batch_norms, recalibrate, sample_indices


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))


def test_statistics_are_those_of_the_batches_and_frozen_layers_keep_theirs():
    model = net()
    frozen = model[1]
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.running_mean.fill_(7.0)
    model[5].running_mean.fill_(5.0)  # stale: as after a fast-moving run
    model.train()
    batches = [torch.randn(8, 3, 12, 12) * 3 + 1 for _ in range(3)]
    assert recalibrate(model, batches, model) == 1
    with torch.no_grad():
        model.eval()
        inner = torch.cat([model[:5](b) for b in batches])
    expected = inner.mean(dim=(0, 2, 3))
    assert torch.allclose(model[5].running_mean, expected, atol=1e-5)
    assert torch.all(frozen.running_mean == 7.0)
    assert model[5].momentum == 0.1
    model.train()
    assert all(m.training for m in model.modules())


def test_modes_restored_and_no_layers_means_no_forward():
    model = net()
    model.eval()
    model[3].train()
    recalibrate(model, [torch.randn(2, 3, 12, 12)], model)
    assert [m.training for m in model] == [False, False, False, True, False, False]
    calls = []
    assert recalibrate(nn.Linear(2, 2), [torch.zeros(1, 2)], calls.append) == 0
    assert calls == []


def test_learning_layers_and_sample_are_deterministic():
    model = net()
    assert len(learning_batch_norms(model)) == 2
    assert sample_indices(100, 10, 3) == sample_indices(100, 10, 3) != sample_indices(100, 10, 4)
    assert sample_indices(5, 10, 0) == [0, 1, 2, 3, 4]
    assert len(set(sample_indices(100, 10, 3))) == 10
