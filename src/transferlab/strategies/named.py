"""The named strategies, each compiled to a Plan over a model's layer groups."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from transferlab.errors import UserError
from transferlab.models.groups import LayerGroups
from transferlab.strategies.plan import Phase, Plan


class StrategyOptions(BaseModel):
    """Knobs shared by the named strategies (each uses the ones it needs)."""

    lr: float | None = Field(None, gt=0, description="base lr; None = the strategy's default")
    head_lr: float | None = Field(None, gt=0, description="lr of the new head; None = the strategy's default")
    epochs: float = Field(3, gt=0)
    warmup: float = Field(0.06, ge=0, lt=1)
    schedule: str = "linear"


def _one_phase(name: str, lrs: dict[str, float], opts: StrategyOptions) -> list[Phase]:
    return [Phase(name=name, epochs=opts.epochs, lrs=lrs, warmup=opts.warmup, schedule=opts.schedule)]


def _body_and_head(body: list[str], lr: float, head_lr: float) -> dict[str, float]:
    lrs = {g: lr for g in body}
    lrs["head"] = head_lr
    return lrs


def full(groups: LayerGroups, opts: StrategyOptions, arg: int | None) -> list[Phase]:
    lr = opts.lr or 3e-5
    body = [g for g in groups.names if g != "head"]
    return _one_phase("full", _body_and_head(body, lr, opts.head_lr or lr), opts)


def feature_extraction(groups: LayerGroups, opts: StrategyOptions, arg: int | None) -> list[Phase]:
    return _one_phase("head only", {"head": opts.head_lr or opts.lr or 1e-3}, opts)


def freeze_bottom(groups: LayerGroups, opts: StrategyOptions, arg: int | None) -> list[Phase]:
    if arg is None or arg < 0 or arg > groups.num_layers:
        raise UserError(f"freeze-bottom:{arg} asks to freeze {arg} layers but the model has "
                        f"{groups.num_layers} encoder layers.",
                        f"Use freeze-bottom:N with 0 <= N <= {groups.num_layers} (embeddings are always frozen).")
    lr = opts.lr or 5e-5
    body = [g for g in groups.names if g.startswith("layer.") and int(g.split(".")[1]) >= arg]
    body += [g for g in groups.names if g == "pooler"]
    return _one_phase(f"freeze bottom {arg}", _body_and_head(body, lr, opts.head_lr or lr), opts)


def freeze_attention(groups: LayerGroups, opts: StrategyOptions, arg: int | None) -> list[Phase]:
    lr = opts.lr or 1e-4
    body = [g for g in groups.names if g.endswith(".ffn") or g == "pooler"]
    return _one_phase("ffn + head", _body_and_head(body, lr, opts.head_lr or lr), opts)


STRATEGIES: dict[str, Callable[[LayerGroups, StrategyOptions, int | None], list[Phase]]] = {
    "full": full,
    "feature-extraction": feature_extraction,
    "freeze-bottom": freeze_bottom,
    "freeze-attention": freeze_attention,
}


def build_plan(strategy: str, groups: LayerGroups, opts: StrategyOptions) -> Plan:
    """Compile a strategy name such as `freeze-bottom:4` into a Plan for these layer groups."""
    name, _, raw_arg = strategy.partition(":")
    if name not in STRATEGIES:
        raise UserError(f"Unknown strategy '{strategy}'.", f"Choose one of: {', '.join(STRATEGIES)} "
                        "(freeze-bottom takes a layer count, e.g. freeze-bottom:4).")
    arg = None
    if raw_arg:
        try:
            arg = int(raw_arg)
        except ValueError as err:
            raise UserError(f"Strategy '{strategy}': '{raw_arg}' is not a whole number.",
                            "Write it as freeze-bottom:4.") from err
    return Plan(strategy, STRATEGIES[name](groups, opts, arg))
