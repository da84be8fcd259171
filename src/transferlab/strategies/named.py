"""The named strategies, each compiled to a Plan over a model's layer groups.

A strategy name may carry one argument after a colon: `freeze-bottom:4`, `freeze-top:2`, `progressive:3` (depth),
`gradual:2`, `llrd:0.8` or `llrd:fastai` (decay). `custom` takes its phases from the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, PositiveFloat

from transferlab.config import RunConfig
from transferlab.errors import UserError
from transferlab.strategies.plan import Phase, Plan

if TYPE_CHECKING:  # the CLI lists the strategies at start-up: no model library (torch) on that path
    from transferlab.backbones.groups import LayerGroups

HEAD_LR = 1e-3  # a new, randomly initialised head needs a far higher lr than the pretrained body below it
# new, small parameter sets tolerate (and need) far higher rates than pretrained weights
LORA_LR, BITFIT_LR, PROMPT_LR = 1e-3, 1e-3, 3e-2  # LoRA: 1e-3 beat 5e-4 by 1.1 points (2,000 reviews, 3 seeds)
FASTAI_DECAY = 1 / 2.6  # fastai / ULMFiT: each layer group down gets the lr divided by 2.6
DECAY_PRESETS = {"fastai": FASTAI_DECAY}
# fitted in seconds with scikit-learn, no plan over layer groups (training/baselines.py); `auto` probes and picks
BASELINES = ("tfidf", "static-embeddings")
AUTO = "auto"


class StrategyOptions(BaseModel):
    """Knobs shared by the named strategies (each uses the ones it needs)."""

    lr: float | None = Field(None, gt=0, description="base lr; None = the strategy's default")
    head_lr: float | None = Field(None, gt=0, description="lr of the new head; None = the strategy's default")
    epochs: float = Field(3, gt=0, description="total epochs (multi-phase plans split them evenly)")
    warmup: float = Field(0.06, ge=0, lt=1)
    schedule: str = "linear"
    decay: float | None = Field(None, gt=0, le=1, description="llrd/gradual: lr factor per layer going down")
    depth: int | None = Field(None, ge=0, description="progressive/gradual: layers unfrozen from the top")
    unfreeze_embeddings: bool = Field(False, description="progressive/gradual: a last phase adds the embeddings")
    epochs_per_phase: list[PositiveFloat] | None = Field(None, description="one value for all, or one per phase")
    phase_lrs: list[PositiveFloat] | None = Field(None, description="lr of each phase; the last one repeats")
    phases: list[Phase] | None = Field(None, description="the phases of a custom plan")


# ---- rates by level -----------------------------------------------------------------------------
def _discriminative(levels: list[list[str]], base: float, decay: float, inputs: list[str],
                    head_lr: float | None = None) -> dict[str, float]:
    """lr(level j from the top) = base * decay**j; the head at `head_lr` (default base); the input level lowest."""
    lrs = {g: base * decay**j for j, level in enumerate(levels) for g in level}
    lrs.update({g: base * decay ** len(levels) for g in inputs})
    lrs["head"] = head_lr or base
    return lrs


def _per_phase(values: list[float] | None, n: int, what: str, strategy: str) -> list[float] | None:
    """Expand a per-phase list: one value for all, or one per phase (a shorter list repeats its last value)."""
    if values is None:
        return None
    if not values or len(values) > n:
        raise UserError(f"strategy.{what} gives {len(values)} values but '{strategy}' has {n} phases.",
                        f"Give between 1 and {n} values (a shorter list repeats its last value).")
    return values + [values[-1]] * (n - len(values))


# ---- argument parsing -----------------------------------------------------------------------------
def _int_arg(strategy: str, arg: str | None, default: int | None) -> int | None:
    if arg is None:
        return default
    try:
        return int(arg)
    except ValueError as err:
        raise UserError(f"Strategy '{strategy}:{arg}': '{arg}' is not a whole number.",
                        f"Write it as {strategy}:2 (a layer count).") from err


COUNTS = {"lora": "the LoRA rank", "prompt-tuning": "the number of virtual tokens"}


def count_arg(strategy: str, arg: str | None) -> int | None:
    """The count after `lora:` or `prompt-tuning:` (a whole number >= 1), or None when the name has none."""
    if arg is None:
        return None
    if not arg.isdigit() or int(arg) < 1:
        raise UserError(f"Strategy '{strategy}:{arg}': {COUNTS[strategy]} must be a whole number of at least 1.",
                        f"Write e.g. {strategy}:{8 if strategy == 'lora' else 20}.")
    return int(arg)


def parse_decay(value: str | float, where: str) -> float:
    """A decay factor in (0, 1], given as a number or a preset name (`fastai` = 1/2.6)."""
    if isinstance(value, str) and value in DECAY_PRESETS:
        return DECAY_PRESETS[value]
    try:
        decay = float(value)
    except ValueError as err:
        raise UserError(f"{where}: decay '{value}' is neither a number nor a preset.",
                        f"Use a number in (0, 1] or one of: {', '.join(DECAY_PRESETS)}.") from err
    if not 0 < decay <= 1:
        raise UserError(f"{where}: decay {decay} is outside (0, 1].",
                        "Each layer down gets lr * decay, so use e.g. 0.8 (or 'fastai' = 1/2.6).")
    return decay


def _no_arg(strategy: str, arg: str | None) -> None:
    if arg is not None:
        raise UserError(f"Strategy '{strategy}' takes no argument (got '{strategy}:{arg}').",
                        f"Write just '{strategy}'.")


# ---- one-phase strategies -------------------------------------------------------------------------
def _one_phase(name: str, lrs: dict[str, float], opts: StrategyOptions) -> list[Phase]:
    return [Phase(name=name, epochs=opts.epochs, lrs=lrs, warmup=opts.warmup, schedule=opts.schedule)]


def _body_and_head(groups: LayerGroups, body: list[str], lr: float, opts: StrategyOptions) -> dict[str, float]:
    """The body groups at `lr`; the head at its own lr (HEAD_LR by default when it is new, else `lr`)."""
    lrs = {g: lr for g in body}
    lrs["head"] = opts.head_lr or (HEAD_LR if groups.new_head else lr)
    return lrs


def full(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    _no_arg("full", arg)
    lr = opts.lr or 3e-5
    body = [g.name for g in groups if g.kind != "head"]
    return _one_phase("full", _body_and_head(groups, body, lr, opts), opts)


def feature_extraction(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    _no_arg("feature-extraction", arg)
    return _one_phase("head only", {"head": opts.head_lr or opts.lr or HEAD_LR}, opts)


def freeze_bottom(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    n = _int_arg("freeze-bottom", arg, None)
    depth = groups.num_layers
    if n is None or n < 0 or n > depth:
        raise UserError(f"freeze-bottom:{arg} asks to freeze {arg} layers but the model has {depth} encoder layers "
                        f"(levels above its {', '.join(groups.inputs) or 'input'}).",
                        f"Use freeze-bottom:N with 0 <= N <= {depth} (the input level is always frozen).")
    lr = opts.lr or 5e-5
    # levels 0..n stay frozen; an encoder-decoder's decoder levels sit above every encoder level, so they learn.
    # A pooler belongs to the top of the encoder but serves the head: it learns whatever n is.
    body = [g.name for g in groups.body if g.level > n or g.kind == "pooler"]
    return _one_phase(f"freeze bottom {n}", _body_and_head(groups, body, lr, opts), opts)


def freeze_top(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """Top-down freezing: the N highest levels of the body stay frozen (an encoder-decoder's decoder levels first);
    every level below them, the input level included, learns with the head."""
    levels = groups.levels()
    n = _int_arg("freeze-top", arg, None)
    if n is None or not 0 <= n <= len(levels):
        raise UserError(f"freeze-top:{arg} asks to freeze {arg} levels but the model has {len(levels)} above its "
                        f"{', '.join(groups.inputs) or 'input'}.",
                        f"Use freeze-top:N with 0 <= N <= {len(levels)} (N = 0 trains everything).")
    frozen = {name for level in levels[:n] for name in level}
    # a pooler sits on the top level but serves the head: it learns whatever N is
    body = [g.name for g in groups if g.kind != "head" and (g.name not in frozen or g.kind == "pooler")]
    return _one_phase(f"freeze top {n}", _body_and_head(groups, body, opts.lr or 5e-5, opts), opts)


def freeze_attention(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    _no_arg("freeze-attention", arg)
    groups.require_kind("attention", "freeze-attention")
    lr = opts.lr or 1e-4
    # a decoder's cross-attention (decoder.i.cross) is its bridge to the encoder, and new in a warm start: it learns
    body = groups.of_kind("ffn", "cross-attention", "norm", "pooler")
    return _one_phase("ffn + head", _body_and_head(groups, body, lr, opts), opts)


def llrd(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """Layer-wise lr decay: one phase, every group learns, each layer down at `decay` times the lr above."""
    decay = parse_decay(arg, f"Strategy 'llrd:{arg}'") if arg is not None else opts.decay or 0.8
    # a model whose embedding matrix is its output layer (tied T5) has it in the head, no embeddings group
    lrs = _discriminative(groups.levels(), opts.lr or 1e-4, decay, groups.inputs, head_lr=opts.head_lr)
    return _one_phase(f"llrd x{decay:.3g}", lrs, opts)


# ---- parameter-efficient strategies ---------------------------------------------------------------
def lora(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """LoRA: the adapters the model carries (strategies/adapters.py adds them) and the head learn."""
    rank = count_arg("lora", arg)
    groups.require_kind("adapter", "lora")
    adapters = [g for g in groups.of_kind("adapter") if g != "prompt"]
    name = f"lora r{rank} + head" if rank else "lora + head"
    return _one_phase(name, _body_and_head(groups, adapters, opts.lr or LORA_LR, opts), opts)


def bitfit(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """BitFit: only the biases of the body (every `<group>@bias`) and the whole head learn."""
    _no_arg("bitfit", arg)
    biases = [f"{g.name}@bias" for g in groups if g.kind != "head" and groups[f"{g.name}@bias"].params]
    if not biases:
        raise UserError("Strategy 'bitfit' trains bias terms, but this model's layers have none (e.g. T5).",
                        "Use lora or freeze-attention with this model.")
    return _one_phase("biases + head", _body_and_head(groups, biases, opts.lr or BITFIT_LR, opts), opts)


def prompt_tuning(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """Prompt tuning: the virtual tokens (strategies/adapters.py adds them) and the head learn."""
    tokens = count_arg("prompt-tuning", arg)
    if "prompt" not in groups.names:
        raise UserError("Strategy 'prompt-tuning' trains virtual tokens, but this model carries none.",
                        "Build the model with the prompt-tuning strategy (transferlab train/plan add them).")
    name = f"{tokens} virtual tokens + head" if tokens else "virtual tokens + head"
    return _one_phase(name, _body_and_head(groups, ["prompt"], opts.lr or PROMPT_LR, opts), opts)


# ---- multi-phase strategies -----------------------------------------------------------------------
def _unfreezing(groups: LayerGroups, opts: StrategyOptions, arg: str | None, strategy: str,
                decay: float | None) -> list[Phase]:
    """Phase 1 trains the head; each next phase adds the next layer from the top (ULMFiT's gradual unfreezing).

    With `decay`, the layers of a phase learn at discriminative rates below the phase's lr."""
    levels = groups.levels()
    depth = _int_arg(strategy, arg, opts.depth)
    depth = len(levels) if depth is None else depth
    if not 0 <= depth <= len(levels):
        raise UserError(f"Strategy '{strategy}' asks to unfreeze {depth} layers but the model has {len(levels)}.",
                        f"Use {strategy}:N with 0 <= N <= {len(levels)} (or leave N out for all layers).")
    if opts.unfreeze_embeddings and not groups.inputs:
        raise UserError(f"strategy.unfreeze_embeddings with '{strategy}': this model has no input-level group to "
                        "unfreeze.", "Set unfreeze_embeddings: false.")
    if opts.unfreeze_embeddings and depth < len(levels):
        raise UserError(f"strategy.unfreeze_embeddings with '{strategy}' at depth {depth} would train the "
                        f"embeddings under {len(levels) - depth} frozen layers.",
                        "Unfreeze every layer (leave the depth out) or set unfreeze_embeddings: false.")
    n = 1 + depth + opts.unfreeze_embeddings
    lrs = _per_phase(opts.phase_lrs, n, "phase_lrs", strategy) or \
        [opts.head_lr or HEAD_LR] + [opts.lr or 1e-4] * (n - 1)
    epochs = _per_phase(opts.epochs_per_phase, n, "epochs_per_phase", strategy) or [round(opts.epochs / n, 4)] * n
    phases = []
    for k in range(n):
        unfrozen = levels[:min(k, depth)]
        inputs = groups.inputs if k > depth else []
        if decay is None:
            phase_lrs = {g: lrs[k] for level in unfrozen for g in level} | {g: lrs[k] for g in inputs} | \
                {"head": lrs[k]}
        else:
            phase_lrs = _discriminative(unfrozen, lrs[k], decay, inputs)
        name = "head" if k == 0 else f"+ {' + '.join(inputs)}" if inputs else f"+ {groups.unit(levels[k - 1])}"
        phases.append(Phase(name=name, epochs=epochs[k], lrs=phase_lrs, warmup=opts.warmup, schedule=opts.schedule))
    return phases


def progressive(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """Gradual unfreezing from the top, every learning group of a phase at the phase's lr."""
    return _unfreezing(groups, opts, arg, "progressive", None)


def gradual(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    """ULMFiT: gradual unfreezing + discriminative lrs (default decay 1/2.6) within each phase."""
    return _unfreezing(groups, opts, arg, "gradual", opts.decay or FASTAI_DECAY)


def custom(groups: LayerGroups, opts: StrategyOptions, arg: str | None) -> list[Phase]:
    _no_arg("custom", arg)
    if opts.phases is None:
        raise UserError("Strategy 'custom' needs its phases: the config has no strategy.phases.",
                        "Add strategy.phases: a list of {name, epochs, lrs: {group pattern: lr}} (see the README).")
    return list(opts.phases)


Strategy = Callable[["LayerGroups", StrategyOptions, str | None], list[Phase]]
STRATEGIES: dict[str, Strategy] = {
    "full": full,
    "feature-extraction": feature_extraction,
    "freeze-bottom": freeze_bottom,
    "freeze-top": freeze_top,
    "freeze-attention": freeze_attention,
    "progressive": progressive,
    "llrd": llrd,
    "discriminative": llrd,
    "gradual": gradual,
    "lora": lora,
    "bitfit": bitfit,
    "prompt-tuning": prompt_tuning,
    "custom": custom,
}
USAGE = {"freeze-bottom": "freeze-bottom:N", "freeze-top": "freeze-top:N", "progressive": "progressive[:DEPTH]",
         "gradual": "gradual[:DEPTH]", "llrd": "llrd[:DECAY|fastai]", "discriminative": "discriminative[:DECAY|fastai]",
         "lora": "lora[:RANK]", "prompt-tuning": "prompt-tuning[:TOKENS]", "custom": "custom (phases from the config)"}


def strategy_usage() -> str:
    """`full, feature-extraction, freeze-bottom:N, ..., tfidf, static-embeddings, auto`: every strategy with its
    argument."""
    return ", ".join([*(USAGE.get(name, name) for name in STRATEGIES), *BASELINES, AUTO])


def build_plan(strategy: str, groups: LayerGroups, opts: StrategyOptions) -> Plan:
    """Compile a strategy name such as `freeze-bottom:4` or `llrd:0.8` into a Plan for these layer groups."""
    name, sep, raw_arg = strategy.partition(":")
    if name in BASELINES:
        raise UserError(f"'{strategy}' is a baseline fitted with scikit-learn, not a plan over layer groups: it has "
                        "no phases to show.", f"Train it (transferlab train --strategy {strategy}) or compare it "
                        f"(transferlab compare --strategies {strategy},full); `plan` shows fine-tuning strategies.")
    if name == AUTO:
        raise UserError("'auto' chooses a plan by probing candidates; it is not a plan itself.",
                        "Use it with `transferlab train --strategy auto` (and `plan --strategy auto` to see what it "
                        "would probe); compare and search take named strategies.")
    if name not in STRATEGIES:
        raise UserError(f"Unknown strategy '{strategy}'.", f"Choose one of: {strategy_usage()}.")
    if opts.phases is not None and name != "custom":
        raise UserError(f"The config gives strategy.phases but names strategy '{strategy}'.",
                        "Set strategy.name to 'custom' to train those phases, or drop strategy.phases.")
    return Plan(strategy, STRATEGIES[name](groups, opts, raw_arg if sep else None))


def strategy_options(cfg: RunConfig) -> StrategyOptions:
    """The strategy knobs of a run config (custom phases inherit the training warmup and schedule)."""
    s, t = cfg.strategy, cfg.training
    phases = None
    if s.phases is not None:
        phases = [Phase(name=p.name or f"phase {i + 1}", epochs=p.epochs, lrs=p.lrs,
                        warmup=t.warmup if p.warmup is None else p.warmup, schedule=p.schedule or t.schedule,
                        resolution=p.resolution)
                  for i, p in enumerate(s.phases)]
    epochs_per_phase = [s.epochs_per_phase] if isinstance(s.epochs_per_phase, float | int) else s.epochs_per_phase
    return StrategyOptions(
        lr=s.lr, head_lr=s.head_lr, epochs=t.epochs, warmup=t.warmup, schedule=t.schedule,
        decay=None if s.decay is None else parse_decay(s.decay, "strategy.decay"), depth=s.depth,
        unfreeze_embeddings=s.unfreeze_embeddings, epochs_per_phase=epochs_per_phase, phase_lrs=s.phase_lrs,
        phases=phases)


# the strategy of a run that names none, on a model without attention layers (a CNN): freeze-attention's place
DEFAULT_WITHOUT_ATTENTION = "llrd"


def plan_for_config(cfg: RunConfig, groups: LayerGroups) -> Plan:
    """The Plan a run config asks for, on these layer groups. A config that names no strategy gets the default
    (freeze-attention), or llrd where the model has no attention layers to freeze."""
    name = cfg.strategy.name
    if "name" not in cfg.strategy.model_fields_set and "attention" not in groups.kinds:
        name = DEFAULT_WITHOUT_ATTENTION
    return build_plan(name, groups, strategy_options(cfg))
