"""The two cheap reference classifiers as ordinary torch models, so a saved baseline predicts, evaluates and serves
through the same Predictor as any fine-tuned model (no pickle: every fitted number is a tensor in safetensors).

- `tfidf`: TF-IDF of the backbone tokenizer's word pieces and their bigrams (sublinear tf, l2 norm, as scikit-learn's
  TfidfVectorizer computed it at training time) + the logistic regression fitted on it.
- `static-embeddings`: the mean of the backbone's input embedding rows of a text's word pieces (one vector per
  piece whatever its context), standardised, + the logistic regression fitted on it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class BaselineConfig(PretrainedConfig):
    """Which baseline, its input sizes, and the backbone config whose tokenizer it reads (stored as a dict)."""

    model_type = "transferlab-baseline"

    def __init__(self, kind: str = "tfidf", backbone: dict | None = None, task: str = "classification",
                 vocab_size: int = 1, width: int = 1, **kwargs):
        self.kind = kind
        self.backbone = backbone or {}
        self.task = task
        self.vocab_size = vocab_size  # word pieces of the tokenizer (bigram keys are built from it)
        self.width = width  # TF-IDF terms kept, or the embedding size
        super().__init__(**kwargs)


def bigram_keys(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """One integer per pair of neighbouring word pieces, above every unigram id (so both share one key space)."""
    return (ids[..., :-1] + 1) * vocab_size + ids[..., 1:]


class BaselineForSequenceClassification(PreTrainedModel):
    """Fixed features of the word pieces (TF-IDF or averaged static embeddings) -> a linear classifier."""

    config_class = BaselineConfig
    base_model_prefix = "baseline"

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        if config.kind == "tfidf":
            self.register_buffer("keys", torch.zeros(config.width, dtype=torch.long))  # sorted term keys
            self.register_buffer("idf", torch.ones(config.width))
        else:
            self.embeddings = nn.Embedding(config.vocab_size, config.width)
            self.embeddings.weight.requires_grad_(False)
            self.register_buffer("mean", torch.zeros(config.width))
            self.register_buffer("scale", torch.ones(config.width))
        self.classifier = nn.Linear(config.width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every weight is fitted (or copied from the backbone), never drawn at random

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The fixed feature vector of each text (what the logistic regression was fitted on)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.config.kind == "tfidf":
            return self._tfidf(input_ids, mask)
        vectors = self.embeddings(input_ids) * mask.unsqueeze(-1)
        mean = vectors.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return (mean - self.mean) / self.scale

    def _tfidf(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        terms = torch.cat([torch.where(mask, input_ids, -1),
                           torch.where(mask[:, 1:] & mask[:, :-1], bigram_keys(input_ids, self.config.vocab_size), -1)],
                          dim=1)
        column = torch.searchsorted(self.keys, terms).clamp(max=self.keys.numel() - 1)
        known = (self.keys[column] == terms) & (terms >= 0)  # terms never seen in training count for nothing
        tf = torch.zeros(input_ids.shape[0], self.keys.numel(), device=input_ids.device)
        tf.scatter_add_(1, column, known.float())
        tfidf = torch.where(tf > 0, 1 + torch.log(tf.clamp_min(1)), tf) * self.idf
        return tfidf / tfidf.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **unused) -> SequenceClassifierOutput:
        logits = self.classifier(self.features(input_ids, attention_mask))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
