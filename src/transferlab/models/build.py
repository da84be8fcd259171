"""Task models on a pretrained backbone: the transferlab head classes filled with the backbone's weights."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from transferlab.backbones import family_of
from transferlab.backbones.base import Backbone
from transferlab.errors import UserError


def default_pooling(model_dir: Path) -> str:
    """The pooling the backbone was trained with, from a sentence-transformers config; else 'cls'."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        modes = json.loads(cfg.read_text())
        for key, pooling in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                             ("pooling_mode_max_tokens", "max")):
            if modes.get(key):
                return pooling
    return "cls"


def dropout_overrides(config: dict, rate: float | None) -> dict[str, float]:
    """Every dropout rate of a Hugging Face config (hidden_dropout_prob, attention_probs_dropout_prob, dropout_rate,
    attention_dropout...) set to `rate`; nothing when `rate` is None (the pretrained rates stay)."""
    if rate is None:
        return {}
    return {key: rate for key, value in config.items() if "dropout" in key and isinstance(value, float)}


def build_task_model(backbone: Backbone, model_class, backbone_dropout: float | None = None,
                     **config_fields) -> nn.Module:
    """A transferlab task model whose backbone carries the pretrained weights of `backbone` (with its dropout
    rates set to `backbone_dropout` when given)."""
    from transferlab.models.modeling_transferlab import TransferlabConfig

    pretrained = backbone.load()
    fields = pretrained.config.to_dict()
    config = TransferlabConfig(backbone={**fields, **dropout_overrides(fields, backbone_dropout)}, **config_fields)
    model = model_class(config)
    missing, _unexpected = model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
    if missing:
        raise UserError(f"The weights in '{backbone.model_dir}' do not fit a {pretrained.config.model_type} "
                        f"backbone: missing {', '.join(missing[:5])}.", "Use a complete Hugging Face model directory.")
    return model


def randomize_backbone(model: nn.Module, backbone_prefix: str = "backbone.") -> None:
    """Replace a task model's pretrained backbone weights with a fresh random init of the same architecture.

    The from-scratch baseline of `compare --init random`: same shapes and head, none of the transferred knowledge.
    """
    module = getattr(model, backbone_prefix.rstrip(".")) if backbone_prefix else model
    family_of(module).randomize(module)
