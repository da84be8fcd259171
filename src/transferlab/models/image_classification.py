"""Image classification on any vision backbone: its pooled vector -> dropout -> linear classifier.

Saved as `TransferlabForImageClassification` (config `model_type: transferlab`), which `import transferlab` registers
with `AutoModelForImageClassification`, so `transformers.pipeline("image-classification", model=RUN/model)` loads a
saved run with the preprocessing it was trained with (its preprocessor_config.json).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from transferlab.models.modeling_transferlab import TransferlabConfig, TransferlabPreTrainedModel


class TransferlabForImageClassification(TransferlabPreTrainedModel):
    """A backbone (`backbone`) and a head (`head_dropout`, `classifier`) over its pooled features."""

    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: TransferlabConfig):
        # imported here, not at the top: transformers registers this class while `transferlab.backbones` may still
        # be importing (the vision family imports transformers)
        from transferlab.backbones.vision import build_backbone, feature_size

        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config())
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(feature_size(self.backbone), config.num_labels)
        self.post_init()

    def features(self, pixel_values: torch.Tensor, **unused) -> torch.Tensor:
        """The pooled vector the head reads (what the frozen-feature cache stores)."""
        return self.pool_output(self.backbone(pixel_values=pixel_values), None)

    def pool_output(self, output, mask: torch.Tensor | None) -> torch.Tensor:
        from transferlab.backbones.vision import pooled_features

        return pooled_features(output)

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                features: torch.Tensor | None = None, **unused) -> ImageClassifierOutputWithNoAttention:
        if features is None:
            features = self.features(pixel_values)
        logits = self.classifier(self.dropout(features))
        # labels: class ids, or rows of class probabilities (mixup / cutmix training batches); cross_entropy takes both
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)
