"""A strategy is data: a Plan is a list of Phases, each saying which layer groups learn and how fast.

The trainer executes plans and knows nothing of strategy names.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from transferlab.errors import UserError
from transferlab.strategies.describe import describe_lrs

if TYPE_CHECKING:  # the CLI reads strategy names at start-up: no model library (torch) on that path
    from transferlab.backbones.groups import LayerGroups

SCHEDULES = ("linear", "cosine", "constant")


class Phase(BaseModel):
    """One stretch of training: group pattern -> lr (groups matched by no pattern stay frozen)."""

    name: str = "train"
    epochs: float = Field(1.0, gt=0)
    lrs: dict[str, float]
    warmup: float = Field(0.06, ge=0, lt=1, description="fraction of the phase's steps spent warming up")
    schedule: str = "linear"
    resolution: int | None = Field(None, ge=16, le=2048, description="image tasks: the side of the square training "
                                                                     "images of this phase (progressive resizing)")


@dataclass
class ResolvedPhase:
    """A phase with patterns expanded to concrete groups, and its parameter counts."""

    phase: Phase
    lrs: dict[str, float]  # concrete group -> lr, bottom to top
    trainable_params: int
    total_params: int
    learns: str = ""  # the groups that learn and their rates, in a few words (strategies/describe.py)

    @property
    def trainable_ratio(self) -> float:
        return self.trainable_params / self.total_params

    def summary(self, index: int) -> dict:
        """The JSON form saved in metrics.json and printed by `transferlab plan`."""
        return {"phase": index + 1, "name": self.phase.name, "epochs": self.phase.epochs,
                "schedule": self.phase.schedule, "warmup": self.phase.warmup, "groups": self.lrs, "learns": self.learns,
                "trainable_params": self.trainable_params, "trainable_ratio": round(self.trainable_ratio, 6),
                **({"resolution": self.phase.resolution} if self.phase.resolution else {})}


@dataclass
class Plan:
    """The phases of a strategy, in order."""

    strategy: str
    phases: list[Phase]

    def resolve(self, groups: LayerGroups) -> list[ResolvedPhase]:
        """Expand group patterns against a model's layer groups; unknown patterns are user errors."""
        if not self.phases:
            raise UserError(f"Strategy '{self.strategy}' has an empty list of phases.",
                            "Give at least one phase with the groups that learn and their lr.")
        resolved = []
        for index, phase in enumerate(self.phases):
            if phase.schedule not in SCHEDULES:
                raise UserError(f"Phase {index + 1} of '{self.strategy}' has unknown schedule '{phase.schedule}'.",
                                f"Use one of: {', '.join(SCHEDULES)}.")
            if not phase.lrs:
                raise UserError(f"Phase {index + 1} of '{self.strategy}' gives no group a learning rate.",
                                "List the groups that learn in this phase, e.g. lrs: {head: 1e-3}.")
            lrs: dict[str, float] = {}
            for pattern, lr in phase.lrs.items():
                if lr <= 0:
                    raise UserError(
                        f"Phase {index + 1} of '{self.strategy}' gives group '{pattern}' lr {lr}.",
                        "Learning rates must be > 0; leave a group out of the phase to freeze it.")
                for group in expand_pattern(pattern, groups):
                    lrs[group] = lr
            _no_overlap(lrs, self.strategy, index)
            ordered = dict(sorted(lrs.items(), key=lambda item: groups.names.index(item[0].partition("@")[0])))
            trainable = sum(groups.size(g) for g in ordered)
            resolved.append(ResolvedPhase(phase, ordered, trainable, groups.total, describe_lrs(ordered, groups)))
        return resolved


def check_resolutions(phases: list[ResolvedPhase], strategy: str, task: str, modality: str) -> None:
    """A phase's `resolution` resizes images: refused, naming the phase, for a task whose inputs are not images."""
    if modality == "image":
        return
    for index, p in enumerate(phases):
        if p.phase.resolution is not None:
            raise UserError(f"Phase {index + 1} ('{p.phase.name}') of '{strategy}' sets resolution: "
                            f"{p.phase.resolution}, but task '{task}' reads {modality} inputs, which have no "
                            "resolution.", "Drop `resolution` from the phase: it trains image tasks on smaller "
                            "images first (progressive resizing).")


def _no_overlap(lrs: dict[str, float], strategy: str, index: int) -> None:
    """A group and a slice of it (`layer.3.ffn` and `layer.3.ffn@bias`) in one phase would train a parameter twice."""
    both = sorted(g for g in lrs if "@" in g and g.partition("@")[0] in lrs)
    if both:
        raise UserError(f"Phase {index + 1} of '{strategy}' names both '{both[0].partition('@')[0]}' and "
                        f"'{both[0]}'.", "Name either the whole group or its slice (e.g. only @bias), not both.")


def expand_pattern(pattern: str, groups: LayerGroups) -> list[str]:
    """Groups matched by `pattern`: exact name, prefix (`layer.3`), range (`layer.2-5.ffn`), glob (`layer.*`) or
    kind (`kind:adapter`); a `@bias` suffix keeps only the biases of each matched group (groups without any drop
    out)."""
    # imported here: the backbones package loads torch and transformers, which plan parsing (and --help) must not
    from transferlab.backbones.groups import SELECTORS

    base, at, selector = pattern.partition("@")
    if at:
        if selector not in SELECTORS:
            raise UserError(f"Group pattern '{pattern}' has unknown selector '@{selector}'.",
                            f"Selectors: {', '.join('@' + s for s in SELECTORS)} (e.g. layer.*@bias).")
        matched = [f"{g}@{selector}" for g in expand_pattern(base, groups) if groups[f"{g}@{selector}"].params]
        if not matched:
            raise UserError(f"Group pattern '{pattern}' matches no parameter of this model (no group matched by "
                            f"'{base}' has any).", "Drop the pattern or choose groups that have such parameters.")
        return matched
    names = groups.names
    if pattern.startswith("kind:"):
        matched = groups.of_kind(pattern[len("kind:"):])
        if not matched:
            raise UserError(f"Group pattern '{pattern}' matches no layer group of this model.",
                            f"Kinds that exist: {', '.join(groups.kinds)}.")
        return matched
    candidates = [pattern]
    m = re.match(r"^([A-Za-z_]+)\.(\d+)-(\d+)(.*)$", pattern)
    if m:
        lo, hi = int(m.group(2)), int(m.group(3))
        candidates = [f"{m.group(1)}.{i}{m.group(4)}" for i in range(min(lo, hi), max(lo, hi) + 1)]
    matched = [n for n in names if any(n == c or n.startswith(c + ".") or fnmatch.fnmatchcase(n, c)
                                       for c in candidates)]
    if not matched:
        raise UserError(f"Group pattern '{pattern}' matches no layer group of this model.",
                        f"Groups that exist: {', '.join(names)}. Patterns may use ranges (layer.2-5.ffn), "
                        "globs (layer.*.ffn) and kinds (kind:ffn).")
    return matched
