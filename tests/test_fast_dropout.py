"""Dropout from 16-bit draws and matmul attention for CPU training: same statistics, same gradients, same
attention as SDPA, seeded like torch's dropout, and the model restored after the fit."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from transferlab.training.fast_dropout import ATTENTION, LEVELS, BitsDropout, FastCpuTraining, bits_dropout


def test_mask_rate_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.ones(400, 1000, requires_grad=True)
    y = bits_dropout(x, 0.1)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003
    scale = LEVELS / (LEVELS - round(0.1 * LEVELS))
    assert torch.equal(y[kept], torch.full_like(y[kept], scale))
    assert abs(y.mean().item() - 1) < 0.005  # the exact scale keeps the expectation
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x·mask·scale)/dx = mask·scale


def test_mask_follows_the_seed_and_eval_is_identity():
    x = torch.randn(64, 64)
    torch.manual_seed(3)
    a = bits_dropout(x, 0.2)
    torch.manual_seed(3)
    b = bits_dropout(x, 0.2)
    c = bits_dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(b, c)
    assert bits_dropout(x, 0.2, training=False) is x
    assert BitsDropout(0.5).eval()(x) is x


def test_every_mask_lane_is_uniform():
    # four 16-bit lanes per 64-bit draw: a signed draw's top lane would never fall under the rate
    torch.manual_seed(1)
    y = bits_dropout(torch.ones(100_000, 4), 0.5)
    assert ((y == 0).float().mean(0) - 0.5).abs().max() < 0.01


def _bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertModel(config, add_pooling_layer=False)


@pytest.mark.parametrize("training", [True, False])
def test_attention_matches_sdpa_and_the_model_is_restored(training):
    model = _bert()
    ids = torch.randint(0, 100, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    for module in model.modules():  # no dropout: the two attentions must then agree
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train(training)
    reference = model(input_ids=ids, attention_mask=mask).last_hidden_state
    callback, trainer = FastCpuTraining(), SimpleNamespace(model=model)
    callback.on_fit_start(trainer)
    assert model.config._attn_implementation == ATTENTION
    assert all(type(m) is not nn.Dropout for m in model.modules())
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-5)
    callback.on_fit_abort(trainer)
    assert model.config._attn_implementation == "sdpa"
    assert all(type(m) is nn.Dropout for m in model.modules() if isinstance(m, nn.Dropout))


def test_attention_dropout_draws_from_the_seeded_generator():
    model = _bert().train()
    FastCpuTraining().on_fit_start(SimpleNamespace(model=model))
    ids = torch.randint(0, 100, (2, 7))
    torch.manual_seed(5)
    a = model(input_ids=ids).last_hidden_state
    torch.manual_seed(5)
    b = model(input_ids=ids).last_hidden_state
    c = model(input_ids=ids).last_hidden_state
    assert torch.equal(a, b) and not torch.equal(b, c)
