"""Task models: any Hugging Face encoder as backbone + a transferlab head.

This file is saved next to every trained model and registered for the Auto classes, so it must stay
self-contained (torch + transformers only): `AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)` and `transformers.pipeline(..., trust_remote_code=True)` import it from the model dir.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (
    ModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

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
        prompt_tokens: int = 0,
        **kwargs,
    ):
        self.backbone = backbone or {}
        self.task = task
        self.pooling = pooling
        self.head_hidden_size = head_hidden_size
        self.head_activation = head_activation
        self.head_dropout = head_dropout
        self.prompt_tokens = prompt_tokens  # trainable virtual tokens before every input (prompt tuning)
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        """The backbone's own config object, rebuilt from the stored dict."""
        fields = dict(self.backbone)
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    @property
    def hidden_size(self) -> int:
        # each config class maps its own field (d_model, dim, n_embd, ...) to hidden_size
        return self.backbone_config().hidden_size


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
    if getattr(config, "pruned_heads", None):  # written by `transferlab prune --method heads`
        remove_attention_heads(backbone, config.pruned_heads, attention_head_size(bb_config))
    return backbone


def _select_features(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A Linear keeping only the output (dim 0) or input (dim 1) features listed in `index`."""
    weight = linear.weight.index_select(dim, index)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    return new


def attention_head_size(backbone_config: PretrainedConfig) -> int:
    """Width of one attention head of a BERT-like backbone."""
    return backbone_config.hidden_size // backbone_config.num_attention_heads


def remove_attention_heads(backbone: nn.Module, heads: dict, head_size: int,
                           present: list[list[int]] | None = None) -> None:
    """Slice attention heads out of a BERT-like backbone: {layer: [original head indices]}.

    `present` lists the original indices of the heads each layer still has (default: all of them)."""
    for layer, drop in heads.items():
        attention = backbone.encoder.layer[int(layer)].attention
        have = present[int(layer)] if present else range(attention.self.query.out_features // head_size)
        keep = [pos for pos, head in enumerate(have) if head not in set(drop)]
        index = torch.cat([torch.arange(p * head_size, (p + 1) * head_size) for p in keep])
        index = index.to(attention.self.query.weight.device)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, _select_features(getattr(attention.self, name), index, dim=0))
        attention.output.dense = _select_features(attention.output.dense, index, dim=1)
        # the forward pass infers the head count from the tensor shapes; keep the attributes truthful anyway
        attention.self.num_attention_heads = len(keep)
        attention.self.all_head_size = len(keep) * head_size


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce token states (batch, seq, hidden) to one vector per sequence."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PromptTokens(nn.Module):
    """Virtual token embeddings (laid out as peft's PromptEmbedding, which trains them)."""

    def __init__(self, tokens: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(tokens, hidden_size)


class TransferlabPreTrainedModel(PreTrainedModel):
    config_class = TransferlabConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True

    def post_init(self) -> None:
        if getattr(self.config, "prompt_tokens", 0):
            self.prompt_encoder = PromptTokens(self.config.prompt_tokens, self.config.hidden_size)
        super().post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, CRF):
            module.reset_parameters()
        elif hasattr(self.backbone, "_init_weights"):
            self.backbone._init_weights(module)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> tuple[ModelOutput, torch.Tensor]:
        """The backbone's output and the attention mask it used (all ones when none is given)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # models without segments (RoBERTa, DistilBERT) reject the argument
            kwargs["token_type_ids"] = token_type_ids
        prompt = getattr(self, "prompt_encoder", None)
        if prompt is None:
            return self.backbone(**kwargs), attention_mask
        out = self.backbone(**self._with_prompt(prompt.embedding.weight, **kwargs))
        # the virtual tokens only steer the real ones: heads read the positions of the input
        out.last_hidden_state = out.last_hidden_state[:, prompt.embedding.num_embeddings:]
        return out, attention_mask

    def _with_prompt(self, prompt: torch.Tensor, input_ids, attention_mask, token_type_ids=None) -> dict:
        """Backbone inputs with the virtual tokens first: embeddings, attention mask and segments extended."""
        batch, n = input_ids.shape[0], prompt.shape[0]
        words = self.backbone.get_input_embeddings()(input_ids)
        kwargs = {"inputs_embeds": torch.cat([prompt.to(words.dtype).expand(batch, -1, -1), words], dim=1),
                  "attention_mask": torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(batch, n), token_type_ids], dim=1)
        return kwargs


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

    def features(self, input_ids, attention_mask=None, token_type_ids=None, **unused) -> torch.Tensor:
        """The pooled vector the head consumes (what the frozen-feature cache stores)."""
        return self.pool_output(*self.encode(input_ids, attention_mask, token_type_ids))

    def pool_output(self, out: ModelOutput, attention_mask: torch.Tensor) -> torch.Tensor:
        """One vector per sequence from the backbone's output, as the config's pooling says."""
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
            features = self.features(input_ids, attention_mask, token_type_ids)
        logits = self.head(features)
        loss = self.loss(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def bio_moves(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed BIO moves: `moves[i, j]` (tag i then tag j) and `starts[j]`; I-X only continues B-X or I-X."""

    def entity(tag: str) -> str | None:
        return tag[2:] if tag[:2] in ("B-", "I-") else None

    starts = torch.tensor([not tag.startswith("I-") for tag in labels])
    moves = torch.tensor([[not after.startswith("I-") or entity(before) == entity(after) for after in labels]
                          for before in labels])
    return moves, starts


class CRF(nn.Module):
    """Linear-chain CRF over tag sequences; moves that break BIO (O -> I-X, B-X -> I-Y) score -10,000.

    Sequences are left-aligned: `mask[b, :n_b]` marks the n_b >= 1 tagged positions of row b.
    """

    FORBIDDEN = -1e4

    def __init__(self, labels: list[str]):
        super().__init__()
        self.labels = list(labels)
        self.transitions = nn.Parameter(torch.zeros(len(labels), len(labels)))
        self.start_transitions = nn.Parameter(torch.zeros(len(labels)))
        self.end_transitions = nn.Parameter(torch.zeros(len(labels)))
        # penalties derive from the labels, not from training: plain tensors per device, never saved
        self._penalties: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset_parameters(self) -> None:
        for param in (self.transitions, self.start_transitions, self.end_transitions):
            nn.init.zeros_(param)

    def potentials(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transition, start and end scores with the forbidden moves penalised."""
        device = self.transitions.device
        if device not in self._penalties:
            moves, starts = bio_moves(self.labels)
            self._penalties[device] = ((~moves).float().to(device) * self.FORBIDDEN,
                                       (~starts).float().to(device) * self.FORBIDDEN)
        moves, starts = self._penalties[device]
        return self.transitions + moves, self.start_transitions + starts, self.end_transitions

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) of each row: emissions (B, T, K), tags and mask (B, T)."""
        trans, start, end = self.potentials()
        mask = mask.bool()
        tags = tags.masked_fill(~mask, 0)
        weight = mask.to(emissions.dtype)
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        gold = (start[tags[:, 0]] + end[last] + (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * weight).sum(1)
                + (trans[tags[:, :-1], tags[:, 1:]] * weight[:, 1:]).sum(1))
        alpha = start + emissions[:, 0]
        for t in range(1, emissions.size(1)):
            step = torch.logsumexp(alpha.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t, None], step, alpha)
        return gold - torch.logsumexp(alpha + end, dim=1)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The Viterbi (highest-scoring) tag sequence of each row, -100 beyond its length: (B, T)."""
        trans, start, end = self.potentials()
        mask = mask.bool()
        lengths = mask.sum(1)
        score = start + emissions[:, 0]
        back = []
        for t in range(1, emissions.size(1)):
            best, prev = (score.unsqueeze(2) + trans).max(dim=1)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
            back.append(prev)
        best_last = (score + end).argmax(dim=1)
        paths = torch.full_like(mask, -100, dtype=torch.long)
        current = best_last
        for t in range(emissions.size(1) - 1, -1, -1):
            current = torch.where(lengths - 1 == t, best_last, current)
            inside = t < lengths
            paths[:, t] = torch.where(inside, current, -100)
            if t > 0:
                current = torch.where(inside, back[t - 1].gather(1, current.unsqueeze(1)).squeeze(1), current)
        return paths


def left_align(values: torch.Tensor, tagged: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tagged positions of each row moved to the front: (values, positions, mask), each (B, T[, K])."""
    counts = tagged.sum(1)
    width = max(int(counts.max()), 1)
    positions = torch.argsort((~tagged).int(), dim=1, stable=True)[:, :width]
    mask = torch.arange(width, device=tagged.device).unsqueeze(0) < counts.unsqueeze(1)
    return values.gather(1, positions.unsqueeze(-1).expand(-1, -1, values.size(-1))), positions, mask


@dataclass
class TaggerOutput(TokenClassifierOutput):
    """Token-classifier output plus `predictions`: decoded tag ids (-100 where untagged), in eval mode."""

    predictions: torch.LongTensor | None = None


class TransferlabForTokenClassification(TransferlabPreTrainedModel):
    """A tag per token; with `config.crf`, a CRF with BIO constraints trains on and Viterbi-decodes whole sequences.

    `tag_mask` marks the positions that carry a tag (e.g. the first sub-token of each word); without it, the
    positions with a label are tagged in training, every attended position otherwise.
    """

    def __init__(self, config: TransferlabConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        labels = [config.id2label[i] for i in range(config.num_labels)]
        self.crf = CRF(labels) if getattr(config, "crf", False) else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        tag_mask: torch.Tensor | None = None,
        decode: bool = True,
        **unused,
    ) -> TaggerOutput:
        """`decode=False` returns the emissions alone (what exported graphs compute; the CRF decodes outside)."""
        out, attention_mask = self.encode(input_ids, attention_mask, token_type_ids)
        emissions = self.classifier(self.dropout(out.last_hidden_state)).float()
        if not decode and labels is None:
            return TaggerOutput(logits=emissions)
        if tag_mask is None:
            tag_mask = labels != -100 if labels is not None else attention_mask
        tagged = tag_mask.bool()
        loss = None
        if labels is not None:
            loss = self._crf_loss(emissions, labels, tagged) if self.crf is not None else \
                nn.functional.cross_entropy(emissions.flatten(0, 1), labels.masked_fill(~tagged, -100).flatten())
        predictions = None if self.training or not decode else tag_predictions(self.crf, emissions, tagged)
        return TaggerOutput(loss=loss, logits=emissions, predictions=predictions)

    def _crf_loss(self, emissions: torch.Tensor, labels: torch.Tensor, tagged: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per tag of the gold paths."""
        rows = tagged.any(dim=1)
        if not rows.any():
            return emissions.sum() * 0
        scores, positions, mask = left_align(emissions[rows], tagged[rows])
        tags = labels[rows].gather(1, positions).clamp(min=0)
        return -self.crf.log_likelihood(scores, tags, mask).sum() / mask.sum()


def tag_predictions(crf: CRF | None, emissions: torch.Tensor, tagged: torch.Tensor) -> torch.Tensor:
    """The tag id of every tagged position (-100 elsewhere): the Viterbi path with a CRF, else the arg-max."""
    if crf is None:
        return emissions.argmax(-1).masked_fill(~tagged, -100)
    predictions = torch.full_like(tagged, -100, dtype=torch.long)
    rows = tagged.any(dim=1)
    if rows.any():
        scores, positions, mask = left_align(emissions[rows], tagged[rows])
        predictions[rows] = predictions[rows].scatter(1, positions, crf.decode(scores, mask))
    return predictions


class TransferlabForQuestionAnswering(TransferlabPreTrainedModel):
    """Extractive question answering: start and end logits of the answer span over the tokens."""

    def __init__(self, config: TransferlabConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **unused,
    ) -> QuestionAnsweringModelOutput:
        hidden = self.encode(input_ids, attention_mask, token_type_ids)[0].last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).float().unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (nn.functional.cross_entropy(start_logits, start_positions)
                    + nn.functional.cross_entropy(end_logits, end_positions)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits)


TransferlabConfig.register_for_auto_class()
TransferlabForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
TransferlabForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
TransferlabForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
