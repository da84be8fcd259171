"""A phase's learning rates in a few words: `embeddings @ 2.0e-05, layer.0-5 @ 2.0e-05, head @ 1.0e-03`.

Groups are read through their typed units and levels, not their names: a unit (a layer) whose every group learns at
one rate is shown once under the unit's name, and consecutive levels of one stack with the same kind and rate are
joined into a range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transferlab.backbones.groups import LayerGroup, LayerGroups

_NUMBER = re.compile(r"(\d+)")


def format_lr(lr: float) -> str:
    """A learning rate with two significant digits: 6.4e-05, 1.0e-03."""
    return f"{lr:.1e}"


@dataclass
class _Entry:
    """Consecutive units (or groups) of one stack and kind that learn at one rate."""

    names: list[str]
    lr: float
    last_level: int


def _differing_number(first: str, last: str) -> int | None:
    """Where two names differ in exactly one number (`layer.0.ffn`, `layer.5.ffn`): that part's index."""
    a, b = _NUMBER.split(first), _NUMBER.split(last)
    differ = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
    if len(a) == len(b) and len(differ) == 1 and a[differ[0]].isdigit():
        return differ[0]
    return None


def span(first: str, last: str) -> str:
    """`layer.0` .. `layer.5` as `layer.0-5`: the range syntax plans accept."""
    i = _differing_number(first, last)
    if i is None:
        return first
    a, b = _NUMBER.split(first), _NUMBER.split(last)
    return "".join(a[:i]) + f"{a[i]}-{b[i]}" + "".join(a[i + 1:])


def _shown(group: LayerGroup, lrs: dict[str, float], members: dict[str, list[str]]) -> tuple[str, str]:
    """(name shown, merge kind): the unit when all of its groups learn at this group's rate, else the group."""
    unit = members[group.unit]
    if all(lrs.get(name) == lrs[group.name] for name in unit):
        return group.unit, "unit"
    return group.name, group.kind


def describe_lrs(lrs: dict[str, float], groups: LayerGroups) -> str:
    """The groups that learn with their rates, bottom to top, merged by unit and level range."""
    members: dict[str, list[str]] = {}
    for group in groups:
        members.setdefault(group.unit, []).append(group.name)
    entries: list[_Entry] = []
    open_entries: dict[tuple, _Entry] = {}
    seen: set[str] = set()
    for group in groups:
        if group.name not in lrs:
            continue
        name, kind = _shown(group, lrs, members)
        if name in seen:
            continue
        seen.add(name)
        key = (group.stack, kind, lrs[group.name])
        entry = open_entries.get(key)
        if entry is not None and entry.last_level == group.level - 1 and \
                _differing_number(entry.names[0], name) is not None:
            entry.names.append(name)
            entry.last_level = group.level
            continue
        entry = _Entry([name], lrs[group.name], group.level)
        entries.append(entry)
        open_entries[key] = entry
    return ", ".join(f"{span(e.names[0], e.names[-1])} @ {format_lr(e.lr)}" for e in entries)
