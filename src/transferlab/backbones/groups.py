"""Typed layer groups: every parameter of a task model in exactly one group with a name, level, kind and stack.

A backbone family describes its architecture as a list of `GroupRule`s (a regex over parameter names and what a
match means); `split_groups` turns them into `LayerGroups`. Strategies reason only about levels and kinds, never
about names: names are what users write in custom plans and read in `transferlab plan`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transferlab.errors import UserError

if TYPE_CHECKING:  # the strategies read this module at CLI start-up: no model library on that path
    from torch import nn

# Kinds in the order a level lists them (bottom to top inside one level).
KINDS = ("embeddings", "stem", "attention", "cross-attention", "ffn", "block", "norm", "pooler", "adapter", "head")
STACKS = ("encoder", "decoder")  # a decoder's levels sit above every encoder level
# Parameters that adapter libraries (peft) add inside a module they wrap: `query.lora_A.default.weight`.
ADAPTER_PART = re.compile(r"\.(lora_[A-Za-z_]+|lora_magnitude_vector)\.")
# Prompt tuning's virtual tokens (`prompt_encoder.embedding.weight` on the task model): an input-level adapter.
PROMPT = re.compile(r"^prompt_encoder\.")
# Parameter selectors a group name may carry after '@' (`layer.3.ffn@bias`): a slice of a group, not a kind.
SELECTORS = {"bias": lambda name: name.endswith("bias")}


@dataclass(frozen=True)
class GroupRule:
    """What a parameter whose name (inside the backbone) matches `pattern` belongs to.

    `name` and `unit` are templates filled with the regex's groups (the first one is the layer index);
    `level` is "index" (the layer index + 1 within its stack), "input" (level 0) or "top" (its stack's top level).
    `unit` names the whole layer the group is part of (`layer.3` for `layer.3.ffn`): what progressive plans print.
    `index` is the layer index where the parameter names hold none (a stage of a flat list of CNN blocks).
    """

    pattern: str
    name: str
    kind: str
    stack: str = "encoder"
    level: str = "index"
    unit: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.level not in ("index", "input", "top"):
            raise ValueError(f"bad group rule {self}")


PROMPT_RULE = GroupRule(PROMPT.pattern, "prompt", "adapter", level="input")


@dataclass
class LayerGroup:
    """One group of parameters: what plans schedule as a unit."""

    name: str
    level: int
    kind: str
    stack: str
    unit: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        return sum(p.numel() for _, p in self.params)


@dataclass
class LayerGroups:
    """A model's groups, bottom to top; `new_head` is False where the head is pretrained (a seq2seq LM head)."""

    groups: list[LayerGroup]
    new_head: bool = True

    def __iter__(self) -> Iterator[LayerGroup]:
        return iter(self.groups)

    def __getitem__(self, name: str) -> LayerGroup:
        base, _, selector = name.partition("@")
        for group in self.groups:
            if group.name == base:
                return group if not selector else select(group, selector)
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def size(self, name: str) -> int:
        return self[name].size

    @property
    def total(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def kinds(self) -> list[str]:
        """The kinds this model has, in KINDS order."""
        present = {g.kind for g in self.groups}
        return [k for k in KINDS if k in present]

    def of_kind(self, *kinds: str) -> list[str]:
        return [g.name for g in self.groups if g.kind in kinds]

    @property
    def inputs(self) -> list[str]:
        """Level-0 groups: the embeddings of a text model, the stem of a CNN."""
        return [g.name for g in self.groups if g.level == 0 and g.kind != "head"]

    @property
    def body(self) -> list[LayerGroup]:
        """Groups above the input level and below the head."""
        return [g for g in self.groups if g.level > 0 and g.kind != "head"]

    def levels(self) -> list[list[str]]:
        """The body's levels, top first, each the names of its groups (what progressive unfreezing adds)."""
        by_level: dict[int, list[str]] = {}
        for group in self.body:
            by_level.setdefault(group.level, []).append(group.name)
        return [by_level[level] for level in sorted(by_level, reverse=True)]

    def unit(self, names: Iterable[str]) -> str:
        """The display name of a level (its groups' common unit)."""
        return self[next(iter(names))].unit

    def stack_depth(self, stack: str = "encoder") -> int:
        """How many levels (layers, stages) a stack has above the input level."""
        return len({g.level for g in self.body if g.stack == stack})

    @property
    def num_layers(self) -> int:
        return self.stack_depth("encoder")

    def require_kind(self, kind: str, strategy: str) -> None:
        """A strategy that acts on a kind the model lacks is a user error naming the kinds it has."""
        if kind not in self.kinds:
            raise UserError(f"Strategy '{strategy}' acts on layer groups of kind '{kind}', but this model has none "
                            f"(its kinds: {', '.join(self.kinds)}).",
                            "Choose a strategy that fits the architecture, e.g. freeze-bottom:N, progressive or llrd.")


def select(group: LayerGroup, selector: str) -> LayerGroup:
    """The part of a group whose parameter names a selector keeps (`@bias`: its biases), named `<group>@<selector>`."""
    keep = SELECTORS[selector]
    return LayerGroup(f"{group.name}@{selector}", group.level, group.kind, group.stack, group.unit,
                      [(n, p) for n, p in group.params if keep(n)])


def _sort_key(group: LayerGroup) -> tuple:
    return group.kind == "head", group.level, KINDS.index(group.kind), group.name


def split_groups(named_params: Iterable[tuple[str, nn.Parameter]], rules: list[GroupRule], prefix: str,
                 architecture: str) -> LayerGroups:
    """Place every parameter: names under `prefix` by the first matching rule, every other one in `head`.

    A parameter an adapter added (LoRA) goes to `<group>.adapter`, kind adapter, at the level of the module it
    adapts, so plans can schedule adapters apart from the frozen weights beside them; prompt tuning's virtual
    tokens go to `prompt`, an adapter at the input level."""
    compiled = [(re.compile(r.pattern), r) for r in rules]
    placed: dict[str, tuple[GroupRule | None, tuple[str, ...], bool, list]] = {}
    unmatched = []
    for name, param in named_params:
        if PROMPT.match(name):
            placed.setdefault("prompt", (PROMPT_RULE, (), True, []))[3].append((name, param))
        elif not name.startswith(prefix):
            placed.setdefault("head", (None, (), False, []))[3].append((name, param))
        else:
            inner = name[len(prefix):]
            adapter = bool(ADAPTER_PART.search(inner))
            for regex, rule in compiled:
                match = regex.match(inner)
                if match:
                    key = rule.name.format(*match.groups()) + (".adapter" if adapter else "")
                    placed.setdefault(key, (rule, match.groups(), adapter, []))[3].append((name, param))
                    break
            else:
                unmatched.append(inner)
    if unmatched:
        raise UserError(f"Could not place {len(unmatched)} parameters of the '{architecture}' backbone in a layer "
                        f"group (e.g. {', '.join(unmatched[:4])}).", "This architecture variant is not supported yet.")
    return LayerGroups(sorted(_typed(placed), key=_sort_key))


def _typed(placed: dict) -> list[LayerGroup]:
    """Levels from the rules: indices within each stack, stacks one above the other, the head on top."""
    depth = {s: 0 for s in STACKS}
    for rule, groups, _, _ in placed.values():
        if rule is not None and rule.level == "index":
            depth[rule.stack] = max(depth[rule.stack], _index(rule, groups) + 1)
    offset, start = 1, {}
    for stack in STACKS:
        start[stack] = offset
        offset += depth[stack]
    out = []
    for key, (rule, groups, adapter, params) in placed.items():
        if rule is None or rule.kind == "head":
            out.append(LayerGroup("head", offset, "head", "head", "head", params))
            continue
        level = {"input": 0, "index": start[rule.stack] + _index(rule, groups),
                 "top": start[rule.stack] + max(depth[rule.stack] - 1, 0)}[rule.level]
        unit = (rule.unit or rule.name).format(*groups)
        out.append(LayerGroup(key, level, "adapter" if adapter else rule.kind, rule.stack, unit, params))
    return out


def _index(rule: GroupRule, groups: tuple[str, ...]) -> int:
    if rule.index is not None:
        return rule.index
    return int(groups[0]) if groups else 0
