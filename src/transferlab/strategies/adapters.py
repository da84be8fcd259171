"""The adapters a strategy asks the model to carry, added before the model's layer groups are computed.

`lora[:R]` adds LoRA adapters, `prompt-tuning[:N]` virtual tokens; a custom plan adds those whose section it gives
(`strategy.lora:`, `strategy.prompt:`), so its phases can schedule them like any group (`kind:adapter`,
`layer.5.attention.adapter`, `prompt`). Other strategies ignore both sections, as `full` ignores `decay`. The
trainer never hears of adapters: it trains whatever groups a phase names.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from transferlab.backbones.base import Backbone
from transferlab.backbones.groups import LayerGroups
from transferlab.config import LoraOptions, PromptOptions, RunConfig
from transferlab.errors import UserError
from transferlab.models.adapters import add_lora, add_prompt, save_adapters, weights_checksum
from transferlab.models.modeling_transferlab import TransferlabPreTrainedModel
from transferlab.strategies.named import count_arg
from transferlab.strategies.plan import ResolvedPhase


def _adds(cfg: RunConfig, strategy: str, section) -> tuple[bool, str | None]:
    """(whether the config's strategy adds this kind of adapter, the count after `strategy:` if any)."""
    name, sep, arg = cfg.strategy.name.partition(":")
    if name == strategy:
        return True, count_arg(name, arg if sep else None)
    return name == "custom" and section is not None, None


def lora_options(cfg: RunConfig) -> LoraOptions | None:
    """The LoRA adapters the config's strategy asks for (`lora:16` sets the rank), or None."""
    adds, rank = _adds(cfg, "lora", cfg.strategy.lora)
    if not adds:
        return None
    options = cfg.strategy.lora or LoraOptions()
    return options.model_copy(update={"rank": rank}) if rank is not None else options


def prompt_options(cfg: RunConfig) -> PromptOptions | None:
    """The virtual tokens the config's strategy asks for (`prompt-tuning:20` sets their number), or None."""
    adds, tokens = _adds(cfg, "prompt-tuning", cfg.strategy.prompt)
    if not adds:
        return None
    options = cfg.strategy.prompt or PromptOptions()
    return options.model_copy(update={"tokens": tokens}) if tokens is not None else options


def needs_adapters(cfg: RunConfig) -> bool:
    return lora_options(cfg) is not None or prompt_options(cfg) is not None


def add_adapters(cfg: RunConfig, backbone: Backbone, model: nn.Module, groups: LayerGroups,
                 regroup) -> LayerGroups:
    """Add the adapters the strategy asks for to `model` in place; its layer groups afterwards (`regroup(model)`)."""
    lora, prompt = lora_options(cfg), prompt_options(cfg)
    if prompt is not None:
        if backbone.family.modality != "text":
            raise UserError(f"prompt-tuning prepends virtual tokens to a text, but '{cfg.model.name}' is a "
                            f"{backbone.family.modality} backbone.", "Use lora or bitfit with this backbone.")
        if not isinstance(model, TransferlabPreTrainedModel):
            raise UserError(f"prompt-tuning needs a transferlab encoder head, but task '{cfg.task}' trains a "
                            f"{type(model).__name__}.", "Use lora or bitfit for this task.")
        add_prompt(model, prompt)
    if lora is not None:
        add_lora(model, groups, lora)
    return regroup(model) if lora or prompt else groups


def check_keep_adapters(cfg: RunConfig, groups: LayerGroups, phases: list[ResolvedPhase]) -> None:
    """`keep_adapters` saves the adapters and the head alone: refused where that would not be the whole change."""
    if not cfg.strategy.keep_adapters:
        return
    if not groups.of_kind("adapter"):
        raise UserError(f"--keep-adapters: strategy '{cfg.strategy.name}' adds no adapters to keep.",
                        "Use lora[:R] or prompt-tuning[:N] (or a custom plan with strategy.lora), or drop the flag.")
    for i, phase in enumerate(phases):
        other = [g for g in phase.lrs if groups[g].kind not in ("adapter", "head")]
        if other:
            raise UserError(f"--keep-adapters saves the adapters and the head alone, but phase {i + 1} of "
                            f"'{cfg.strategy.name}' also trains '{other[0]}': the adapters alone would not "
                            "reproduce the model.", "Train only adapters and the head, or drop --keep-adapters "
                            "(the merged model in model/ holds everything).")


def keep_adapters(cfg: RunConfig, backbone: Backbone, model: nn.Module, groups: LayerGroups, out_dir: Path) -> None:
    """Save the adapters alone with a note of the base model they need (name, directory, weights checksum)."""
    base = {"name": cfg.model.name, "path": str(backbone.model_dir), "checksum": weights_checksum(backbone.model_dir)}
    save_adapters(model, groups, out_dir, base)
