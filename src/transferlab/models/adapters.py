"""Adapters on a task model, through peft: LoRA beside the frozen linear layers of chosen kinds of layer groups,
prompt tuning's virtual tokens, merging LoRA into the base weights, and the adapters alone in peft's format.

Adapters are injected in place (`peft.functional.inject_adapter_in_model`), so the task model keeps its class and
its parameter names (`query.base_layer.weight` beside `query.lora_A.default.weight`): layer groups, checkpoints and
the trainer see an ordinary model with a few more parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from peft import LoraConfig, PromptTuningConfig
from peft.functional import get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.prompt_tuning import PromptEmbedding
from safetensors.torch import save_file
from torch import nn

from transferlab.backbones.groups import KINDS, LayerGroups
from transferlab.config import LoraOptions, PromptOptions
from transferlab.errors import UserError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # layer types peft's LoRA wraps that transferlab targets
NOT_TARGETS = ("embeddings", "adapter", "head")  # kinds LoRA does not adapt (the head learns whole)
CONV_ATTRS = ("kernel_size", "stride", "padding", "dilation")  # a LoRA-wrapped conv still answers these
PEFT_PREFIX = "base_model.model."  # how peft's own PeftModel names the task model's parameters in adapter files
ADAPTER_WEIGHTS, ADAPTER_NOTE = "adapter_model.safetensors", "transferlab_adapter.json"


def target_kinds(groups: LayerGroups, options: LoraOptions) -> list[str]:
    """The kinds LoRA adapts: the configured ones, else attention, or a CNN's blocks where a model has no attention."""
    if options.target:
        return options.target
    return ["attention"] if "attention" in groups.kinds or "block" not in groups.kinds else ["block"]


def lora_targets(model: nn.Module, groups: LayerGroups, options: LoraOptions) -> dict[str, nn.Module]:
    """The modules LoRA adapts, by name: linear/conv layers whose weights lie in groups of the target kinds (in the
    top `options.layers` levels). Grouped (depthwise) convolutions stay out: peft adapts them only when the rank
    divides the groups, and they hold few weights (5% of EfficientNet-Lite0's)."""
    target = target_kinds(groups, options)
    bad = [k for k in target if k not in KINDS or k in NOT_TARGETS]
    if bad:
        usable = [k for k in groups.kinds if k not in NOT_TARGETS]
        raise UserError(f"strategy.lora.target names '{bad[0]}', which is not a kind of layer LoRA adapts.",
                        f"Use kinds this model has: {', '.join(usable)} (e.g. target: [attention, ffn]).")
    missing = [k for k in target if k not in groups.kinds]
    if missing:
        raise UserError(f"strategy.lora.target names kind '{missing[0]}', but this model has no layer group of that "
                        f"kind (its kinds: {', '.join(groups.kinds)}).",
                        "Target kinds the model has, e.g. target: [attention].")
    levels = sorted({g.level for g in groups.body}, reverse=True)[:options.layers]
    owned = {id(p) for g in groups if g.kind in target and g.level in levels for _, p in g.params}
    return {name: m for name, m in model.named_modules()
            if isinstance(m, ADAPTABLE) and id(m.weight) in owned and getattr(m, "groups", 1) == 1}


def _width(module: nn.Module) -> int:
    """The smallest dimension of a layer's weight (a LoRA rank above it adds nothing)."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    return min(module.in_channels, module.out_channels)


def add_lora(model: nn.Module, groups: LayerGroups, options: LoraOptions) -> None:
    """Inject LoRA adapters (peft) into the target layers of a task model, in place."""
    targets = lora_targets(model, groups, options)
    if not targets:
        raise UserError(f"strategy.lora.target {target_kinds(groups, options)}: the groups of those kinds hold no "
                        "linear or (ungrouped) convolution layer to adapt.", "Target other kinds (attention, ffn).")
    width = min(_width(m) for m in targets.values())
    if options.rank > width:
        raise UserError(f"LoRA rank {options.rank} is larger than the hidden size ({width}) of the layers it adapts.",
                        f"Use a rank between 1 and {width} (typically 4-64), e.g. lora:8.")
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha or 2 * options.rank, lora_dropout=options.dropout,
                        target_modules=list(targets))
    inject_adapter_in_model(config, model)
    for name, layer in targets.items():  # transformers' MobileNets read a conv's stride for TF-style padding
        if isinstance(layer, nn.Conv2d):
            wrapper = model.get_submodule(name)
            for attr in CONV_ATTRS:
                setattr(wrapper, attr, getattr(layer, attr))


def add_prompt(model: nn.Module, options: PromptOptions) -> None:
    """Give a transferlab task model trainable virtual tokens (peft's PromptEmbedding, initialised from the
    embeddings of random vocabulary words by default); the model's `encode` prepends them to every input."""
    embeddings = model.backbone.get_input_embeddings()
    config = PromptTuningConfig(num_virtual_tokens=options.tokens, token_dim=embeddings.embedding_dim,
                                num_transformer_submodules=1,
                                prompt_tuning_init="SAMPLE_VOCAB" if options.init == "vocab" else "RANDOM")
    model.prompt_encoder = PromptEmbedding(config, embeddings).to(embeddings.weight.device)
    model.config.prompt_tokens = options.tokens


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into the weight it adapts and put the plain layer back: an ordinary model again."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]:
        module.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def weights_checksum(model_dir: Path) -> str:
    """sha256 of a model directory's weight files (what `--keep-adapters` records of the base model)."""
    digest = hashlib.sha256()
    files = sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("pytorch_model*.bin")])
    for path in files:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def save_adapters(model: nn.Module, groups: LayerGroups, out_dir: Path, base: dict) -> None:
    """Write the adapters and the head alone (peft's format: adapter_config.json + adapter_model.safetensors, keys
    as a PeftModel of the task model names them) and a note of the exact base model they need (`base`: name, path,
    checksum)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    whole = [g for g in groups if g.kind == "head" or g.name == "prompt"]  # trained whole: peft's modules_to_save
    state = {name: p.detach() for g in whole for name, p in g.params}
    if has_lora(model):
        state |= get_peft_model_state_dict(model)
        config = model.peft_config["default"]
        config.base_model_name_or_path = base["name"]
        config.modules_to_save = sorted({name.split(".")[0] for name in state if "lora_" not in name})
        config.save_pretrained(str(out_dir))
    save_file({PEFT_PREFIX + k: v.contiguous().cpu() for k, v in state.items()}, str(out_dir / ADAPTER_WEIGHTS))
    note = {"base_model": base, "prompt_tokens": getattr(model.config, "prompt_tokens", 0),
            "parameters": sum(v.numel() for v in state.values())}
    (out_dir / ADAPTER_NOTE).write_text(json.dumps(note, indent=2))


def read_adapters(adapter_dir: Path) -> tuple[dict, dict[str, torch.Tensor], LoraConfig | None]:
    """(note, state dict with the task model's parameter names, LoRA config or None) of a saved adapter directory."""
    from safetensors.torch import load_file

    note_file = adapter_dir / ADAPTER_NOTE
    if not note_file.is_file():
        raise UserError(f"'{adapter_dir}' holds no adapters ({ADAPTER_NOTE} is missing).",
                        "Train with --keep-adapters; the adapters are saved in the run's adapter/ directory.")
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
    lora = LoraConfig.from_pretrained(str(adapter_dir)) if (adapter_dir / "adapter_config.json").is_file() else None
    return json.loads(note_file.read_text()), state, lora
