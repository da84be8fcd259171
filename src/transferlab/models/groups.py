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
    # decoder blocks of encoder-decoder models: self-attention + cross-attention, then feed-forward
    (r"^decoder\.embed_tokens\.", "embeddings"),
    (r"^decoder\.block\.(\d+)\.layer\.[01]\.", "decoder.{0}.attention"),
    (r"^decoder\.block\.(\d+)\.layer\.2\.", "decoder.{0}.ffn"),
    (r"^decoder\.final_layer_norm\.", "decoder.last.ffn"),
    (r"^lm_head\.", "head"),
]
FAMILY_RULES = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE, "mpnet": _BERT_LIKE, "distilbert": _DISTILBERT, "t5": _T5_ENCODER,
    "mt5": _T5_ENCODER,
}


@dataclass
class LayerGroups:
    """Named groups of parameters, bottom to top, with the number of encoder layers."""

    groups: OrderedDict[str, list[tuple[str, nn.Parameter]]]
    num_layers: int

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    def size(self, group: str) -> int:
        return sum(p.numel() for _, p in self.groups[group])

    @property
    def total(self) -> int:
        return sum(self.size(g) for g in self.groups)


def _sort_key(group: str) -> tuple:
    parts = group.split(".")
    order = {"embeddings": 0, "layer": 1, "decoder": 2, "pooler": 3, "head": 4}[parts[0]]
    index = 10**6 if len(parts) > 1 and parts[1] == "last" else int(parts[1]) if len(parts) > 1 else 0
    return order, index, parts[-1] != "attention"


def layer_groups(model: nn.Module, backbone_prefix: str = "backbone.") -> LayerGroups:
    """Assign every parameter of a task model (backbone + head) to a layer group."""
    backbone = getattr(model, backbone_prefix.rstrip("."))
    model_type = backbone.config.model_type
    rules = FAMILY_RULES.get(model_type)
    if rules is None:
        modules = sorted({n.split(".")[0] for n, _ in backbone.named_children()})
        raise UserError(
            f"transferlab has no layer-group rules for architecture '{model_type}' "
            f"(top-level modules found: {', '.join(modules)}).",
            f"Supported families: {', '.join(sorted(FAMILY_RULES))}; use a model of one of them.",
        )
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
    ordered = OrderedDict(sorted(groups.items(), key=lambda kv: _sort_key(kv[0])))
    num_layers = len({g.split(".")[1] for g in ordered if g.startswith("layer.") and g.split(".")[1] != "last"})
    return LayerGroups(ordered, num_layers)
