"""Layer groups by architecture introspection: embeddings, layer.i.attention / layer.i.ffn, pooler, head.

Every parameter of a task model belongs to exactly one group; groups are ordered bottom to top, which is
what strategies (freeze bottom N, progressive unfreezing, layer-wise lr) reason about.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from transferlab.errors import UserError

# Per family: (regex on the parameter name inside the backbone, group template). First match wins.
_BERT_LIKE = [
    (r"^embeddings\.", "embeddings"),
    (r"^embeddings_project\.", "embeddings"),  # ELECTRA: embedding size -> hidden size
    (r"^encoder\.layer\.(\d+)\.attention\.", "layer.{0}.attention"),
    (r"^encoder\.layer\.(\d+)\.(intermediate|output)\.", "layer.{0}.ffn"),
    (r"^encoder\.relative_attention_bias\.", "embeddings"),
    (r"^pooler\.", "pooler"),
]
_DISTILBERT = [
    (r"^embeddings\.", "embeddings"),
    (r"^transformer\.layer\.(\d+)\.(attention|sa_layer_norm)\.", "layer.{0}.attention"),
    (r"^transformer\.layer\.(\d+)\.(ffn|output_layer_norm)\.", "layer.{0}.ffn"),
]
_T5_ENCODER = [
    (r"^shared\.", "embeddings"),
    (r"^encoder\.embed_tokens\.", "embeddings"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.", "layer.{0}.attention"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.", "layer.{0}.ffn"),
    (r"^encoder\.final_layer_norm\.", "layer.last.ffn"),
    # decoder blocks of encoder-decoder models: self-attention, cross-attention, then feed-forward
    (r"^decoder\.embed_tokens\.", "embeddings"),
    (r"^decoder\.block\.(\d+)\.layer\.0\.", "decoder.{0}.attention"),
    (r"^decoder\.block\.(\d+)\.layer\.1\.", "decoder.{0}.cross"),
    (r"^decoder\.block\.(\d+)\.layer\.2\.", "decoder.{0}.ffn"),
    (r"^decoder\.final_layer_norm\.", "decoder.last.ffn"),
    (r"^lm_head\.", "head"),
]
FAMILY_RULES = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE, "mpnet": _BERT_LIKE, "distilbert": _DISTILBERT, "t5": _T5_ENCODER,
    "mt5": _T5_ENCODER,
}
# The cross-attention of a BERT-like decoder (is_decoder + add_cross_attention), in the decoder's own naming.
_BERT_LIKE_CROSS = (r"^encoder\.layer\.(\d+)\.crossattention\.", "layer.{0}.cross")


@dataclass
class LayerGroups:
    """Named groups of parameters, bottom to top, with the number of encoder layers."""

    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]]
    num_layers: int
    new_head: bool = True  # False where the head is pretrained (a seq2seq LM head): no higher default lr

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    def size(self, group: str) -> int:
        return sum(p.numel() for _, p in self.groups[group])

    @property
    def total(self) -> int:
        return sum(self.size(g) for g in self.groups)


def group_sort_key(group: str) -> tuple:
    parts = group.split(".")
    order = {"embeddings": 0, "layer": 1, "decoder": 2, "pooler": 3, "head": 4}[parts[0]]
    index = 10**6 if len(parts) > 1 and parts[1] == "last" else int(parts[1]) if len(parts) > 1 else 0
    return order, index, {"attention": 0, "cross": 1}.get(parts[-1], 2)


def _family_rules(module: nn.Module) -> list[tuple[str, str]]:
    """The rules of a module's architecture family, or a UserError naming its top-level modules."""
    model_type = module.config.model_type
    rules = FAMILY_RULES.get(model_type)
    if rules is None:
        modules = sorted({n.split(".")[0] for n, _ in module.named_children()})
        raise UserError(
            f"transferlab has no layer-group rules for architecture '{model_type}' "
            f"(top-level modules found: {', '.join(modules)}).",
            f"Supported families: {', '.join(sorted(FAMILY_RULES))}; use a model of one of them.",
        )
    return rules


def _encoder_decoder_rules(model: nn.Module) -> list[tuple[str, str]]:
    """Rules of a transformers EncoderDecoderModel (e.g. BERT2BERT): the encoder family's rules under
    `encoder.`; the decoder's base model under `decoder.<base>.` with its layers as decoder.i and its
    cross-attention as decoder.i.cross; the rest of the decoder (its LM head) is the head."""
    encoder = [("^encoder\\." + rx[1:], tpl) for rx, tpl in _family_rules(model.encoder)]
    base = re.escape(model.decoder.base_model_prefix)
    decoder = [(f"^decoder\\.{base}\\." + rx[1:], tpl.replace("layer.", "decoder."))
               for rx, tpl in [_BERT_LIKE_CROSS, *_family_rules(model.decoder)]]
    return [*encoder, *decoder, (r"^decoder\.", "head")]


def _tied_output_is_head(model: nn.Module, groups: dict[str, list]) -> None:
    """A model whose only output layer is its input embedding matrix (T5 with tied embeddings) has no other
    head: that matrix, which named_parameters lists under its embedding name, is moved to the head group."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if "head" in groups or output is None:
        return
    for group, params in groups.items():
        for i, (_, param) in enumerate(params):
            if param is output.weight:
                groups["head"] = [params.pop(i)]
                if not params:
                    del groups[group]
                return


def layer_groups(model: nn.Module, backbone_prefix: str = "backbone.") -> LayerGroups:
    """Assign every parameter of a task model (backbone + head) to a layer group.

    backbone_prefix "" means the model is itself a Hugging Face model (a seq2seq LM such as T5 or an
    EncoderDecoderModel) whose own output layer is the head."""
    backbone = getattr(model, backbone_prefix.rstrip(".")) if backbone_prefix else model
    model_type = backbone.config.model_type
    rules = _encoder_decoder_rules(backbone) if model_type == "encoder-decoder" else _family_rules(backbone)
    compiled = [(re.compile(rx), tpl) for rx, tpl in rules]
    groups: dict[str, list] = {}
    unmatched = []
    for name, param in model.named_parameters():
        if not name.startswith(backbone_prefix):
            groups.setdefault("head", []).append((name, param))
            continue
        inner = name[len(backbone_prefix):]
        for rx, tpl in compiled:
            m = rx.match(inner)
            if m:
                groups.setdefault(tpl.format(*m.groups()), []).append((name, param))
                break
        else:
            unmatched.append(inner)
    if unmatched:
        raise UserError(
            f"Could not place {len(unmatched)} parameters of the '{model_type}' backbone in a layer group "
            f"(e.g. {', '.join(unmatched[:4])}).", "This architecture variant is not supported yet.")
    if not backbone_prefix:
        _tied_output_is_head(model, groups)
    ordered = OrderedDict(sorted(groups.items(), key=lambda kv: group_sort_key(kv[0])))
    num_layers = len({g.split(".")[1] for g in ordered if g.startswith("layer.") and g.split(".")[1] != "last"})
    return LayerGroups(ordered, num_layers)
