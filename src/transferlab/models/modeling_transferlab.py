"""Task models: any Hugging Face encoder as backbone + a transferlab head.

This file is saved next to every trained model and registered for the Auto classes, so it must stay
self-contained (torch + transformers only): `AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)` and `transformers.pipeline(..., trust_remote_code=True)` import it from the model dir.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("mean", "cls", "pooler", "max")
ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU, "identity": nn.Identity}


class TransferlabConfig(PretrainedConfig):
    """A backbone config (stored as a dict) plus the head's hyper-parameters."""

    model_type = "transferlab"

    def __init__(
        self,
        backbone: dict | None = None,
        task: str = "classification",
        pooling: str = "mean",
        head_hidden_size: int | None = None,
        head_activation: str = "tanh",
        head_dropout: float = 0.1,
        **kwargs,
    ):
        self.backbone = backbone or {}
        self.task = task
        self.pooling = pooling
        self.head_hidden_size = head_hidden_size
        self.head_activation = head_activation
        self.head_dropout = head_dropout
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        """The backbone's own config object, rebuilt from the stored dict."""
        fields = dict(self.backbone)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    @property
    def hidden_size(self) -> int:
        return self.backbone.get("hidden_size") or self.backbone.get("d_model") or self.backbone["dim"]


def build_backbone(config: TransferlabConfig) -> nn.Module:
    """An untrained backbone of the stored architecture (encoder only for encoder-decoder families)."""
    bb_config = config.backbone_config()
    if bb_config.model_type in ("t5", "mt5", "umt5"):
        from transformers import T5EncoderModel

        return T5EncoderModel(bb_config)
    backbone = AutoModel.from_config(bb_config)
    if config.pooling != "pooler" and getattr(backbone, "pooler", None) is not None:
        # an unused pooler would get no gradient: drop it (DDP needs every trainable parameter used)
        backbone.pooler = None
    return backbone


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce token states (batch, seq, hidden) to one vector per sequence."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TransferlabPreTrainedModel(PreTrainedModel):
    config_class = TransferlabConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif hasattr(self.backbone, "_init_weights"):
            self.backbone._init_weights(module)


class SequenceHead(nn.Module):
    """pooled vector -> dropout -> dense -> activation -> dropout -> classifier."""

    def __init__(self, config: TransferlabConfig):
        super().__init__()
        hidden = config.head_hidden_size or config.hidden_size
        self.dropout = nn.Dropout(config.head_dropout)
        self.dense = nn.Linear(config.hidden_size, hidden) if hidden > 0 else None
        self.activation = ACTIVATIONS[config.head_activation]() if hidden > 0 else nn.Identity()
        self.classifier = nn.Linear(hidden if hidden > 0 else config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.dropout(pooled)
        if self.dense is not None:
            x = self.dropout(self.activation(self.dense(x)))
        return self.classifier(x)


class TransferlabForSequenceClassification(TransferlabPreTrainedModel):
    """Sequence (or sequence-pair) classification and regression: `num_labels == 1` means regression."""

    def __init__(self, config: TransferlabConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.head = SequenceHead(config)
        self.post_init()

    def features(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The pooled vector the head consumes (what the frozen-feature cache stores)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs)
        if self.config.pooling == "pooler":
            return out.pooler_output
        return pool(out.last_hidden_state, attention_mask, self.config.pooling)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.num_labels == 1:
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        **unused,
    ) -> SequenceClassifierOutput:
        if features is None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            features = self.features(input_ids, attention_mask, token_type_ids)
        logits = self.head(features)
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


TransferlabConfig.register_for_auto_class()
TransferlabForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
