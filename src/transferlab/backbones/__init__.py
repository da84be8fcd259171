"""Backbone families and how a name (`minilm`, a local directory) becomes a Backbone; layer groups of a task model.

Families register here; the first that recognises a name or a module owns it. A new family is one class with the
`BackboneFamily` methods and one `register_family` call (see docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from transferlab.backbones.base import WEIGHT_FILES, Backbone, BackboneFamily
from transferlab.backbones.groups import LayerGroup, LayerGroups, split_groups
from transferlab.backbones.text import TextFamily
from transferlab.backbones.vision import VisionFamily
from transferlab.backbones.weights import check_weights
from transferlab.errors import UserError

FAMILIES: list[BackboneFamily] = [TextFamily(), VisionFamily()]


def register_family(family: BackboneFamily) -> None:
    """Make a backbone family available to every command (tests and plugins add their own)."""
    if all(type(f) is not type(family) for f in FAMILIES):
        FAMILIES.append(family)


def _known_names() -> list[str]:
    return [name for family in FAMILIES for name in family.bundled()]


def open_backbone(name: str, max_length: int | None = None) -> Backbone:
    """The backbone a config's `model.name` names: a bundled model or a local directory, never a download."""
    for family in FAMILIES:
        backbone = family.find(name, max_length)
        if backbone is not None:
            return backbone
    raise _not_a_backbone(name)


def _not_a_backbone(name: str) -> UserError:
    """Why no family took `name`, in the words of the most likely mistake."""
    path = Path(name).expanduser()
    if not path.exists():
        return UserError(f"Model '{name}' is neither a bundled model ({', '.join(_known_names())}) nor an existing "
                         "path.", "Pass a bundled name or the path of a local model directory (transferlab never "
                         "downloads from a hub).")
    if not path.is_dir():
        return UserError(f"Model path '{path}' is a file, not a directory.",
                         "Pass the directory that holds config.json and the weights (model.safetensors).")
    if not (path / "config.json").is_file():
        return UserError(f"Model directory '{path}' has no config.json (found: {_listing(path)}).",
                         "Point --model at a directory written by save_pretrained (config.json + model.safetensors).")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        return UserError(f"Model directory '{path}' has config.json but no weights (found: {_listing(path)}).",
                         "Add model.safetensors (save_pretrained writes it) to the directory.")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "unknown")
    return UserError(f"Model directory '{path}' holds a '{model_type}' model, which no backbone family of "
                     "transferlab knows.", f"Supported architectures: {', '.join(_known_types())}.")


def _known_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types())


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def open_saved(model_dir: Path, model_type: str, max_length: int | None = None) -> Backbone:
    """The backbone family and processor of a saved task model whose backbone has `model_type`."""
    family = family_for(model_type)
    check_weights(model_dir)
    return Backbone(model_dir.name, family, model_dir, family.processor(model_dir, max_length))


def family_for(model_type: str) -> BackboneFamily:
    """The family of a backbone architecture, or a UserError listing the supported ones."""
    for family in FAMILIES:
        if family.accepts(model_type):
            return family
    raise UserError(f"transferlab has no backbone family for architecture '{model_type}'.",
                    f"Supported families: {', '.join(f.name for f in FAMILIES)}.")


def family_of(module: nn.Module) -> BackboneFamily:
    """The family that owns a backbone module."""
    for family in FAMILIES:
        if family.owns(module):
            return family
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", type(module).__name__)
    modules = sorted(name for name, _ in module.named_children())
    raise UserError(f"transferlab has no layer-group rules for architecture '{model_type}' (top-level modules "
                    f"found: {', '.join(modules)}).",
                    f"Supported architectures: {', '.join(_known_types())}; use a model of one of them.")


def layer_groups(model: nn.Module, backbone_prefix: str = "backbone.") -> LayerGroups:
    """Every parameter of a task model (backbone + head) in a typed layer group.

    backbone_prefix "" means the model is itself a Hugging Face model (a seq2seq LM such as T5 or an
    EncoderDecoderModel) whose own output layer is the head."""
    backbone = getattr(model, backbone_prefix.rstrip(".")) if backbone_prefix else model
    family = family_of(backbone)
    groups = split_groups(model.named_parameters(), family.rules(backbone), backbone_prefix,
                          family.architecture(backbone))
    if not backbone_prefix:
        _tied_output_is_head(model, groups)
    return groups


def _tied_output_is_head(model: nn.Module, groups: LayerGroups) -> None:
    """A model whose only output layer is its input embedding matrix (T5 with tied embeddings) has no other
    head: that matrix, which named_parameters lists under its embedding name, is moved to a head group."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if "head" in groups.names or output is None:
        return
    for group in groups:
        for i, (_, param) in enumerate(group.params):
            if param is output.weight:
                moved = group.params.pop(i)
                if not group.params:
                    groups.groups.remove(group)
                top = max(g.level for g in groups) + 1
                groups.groups.append(LayerGroup("head", top, "head", "head", "head", [moved]))
                return


def resolve_model_dir(name: str) -> Path:
    """The directory of a bundled or local model (what `open_backbone` reads)."""
    return open_backbone(name).model_dir
