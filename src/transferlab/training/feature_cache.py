"""Frozen-feature cache: when the bottom of a model stays frozen for a whole phase, compute its output once.

Two depths. Only the head learns: the pooled vector `model.features(...)` of every example is cached and the head
trains on it (`model(features=...)`). The input level and the lowest k levels frozen: the state entering level k+1
is cached (the backbone family says how to capture it and run on from there: `CacheStack`), and only the levels
above, the pooling and the head run. The frozen part is computed in eval mode (no dropout), so the cache is exact,
not an approximation (in fp32, batch norms folded into their convolutions: the same values up to rounding).

A task model is cacheable when it has `features(**inputs)` (the pooled vector its head reads), `pool_output(output,
mask)` and accepts `features=` in its forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn

from transferlab.backbones import family_of
from transferlab.backbones.base import CacheStack
from transferlab.backbones.groups import LayerGroups
from transferlab.training.fold_batch_norm import batch_norms_folded, conv_bn_pairs

MAX_CACHE_BYTES = 4 * 2**30  # beyond this the phase trains uncached rather than risk running out of memory
FOLD_TOLERANCE = 1e-4  # of the largest value: fp32 rounding (Lite0: 1.5e-5 of 5.0); a misread pair is far above


@dataclass(frozen=True)
class CachePoint:
    """Where the frozen bottom of a phase ends: `frozen` levels above the input level (None: only the head learns).

    `after` names the last frozen level (what the cache holds the output of)."""

    frozen: int | None
    after: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.frozen is None:
            return "pooled features (only the head learns)"
        return f"hidden states after {self.after} (the input level and {self.frozen} levels above it frozen)"


def cache_point(model: nn.Module, groups: LayerGroups, learning: Iterable[str]) -> CachePoint | None:
    """Where a phase that trains the `learning` groups can start from cached outputs; None if it cannot."""
    if not all(hasattr(model, attr) for attr in ("features", "pool_output", "backbone")):
        return None  # only models with one pooled vector per example have a cacheable bottom
    learning = list(learning)
    # the frozen bottom must be adapter-free: virtual tokens change the length of the sequence the cached levels
    # see, and a plan adds adapters for them to learn, not to be frozen into a cache
    first = min((groups[g].level for g in learning), default=0)
    if any(g.kind == "adapter" and g.level < first for g in groups):
        return None
    lowest = min((groups[g].level for g in learning if groups[g].kind != "head"), default=None)
    if lowest is None:
        return CachePoint(None)
    # the lowest learning level must sit above at least one frozen layer (caching only the input level saves little)
    if lowest < 2 or family_of(model.backbone).cache_stack(model.backbone) is None:
        return None
    below = [g for g in groups.body if g.level == lowest - 1]
    return CachePoint(lowest - 1, below[0].unit) if below else None


class UpperStack(nn.Module):
    """The levels above the cache point, the pooling and the head, run on cached states."""

    def __init__(self, model: nn.Module, stack: CacheStack, level: int):
        super().__init__()
        self.model = model
        self.stack = stack
        self.level = level

    def forward(self, labels: torch.Tensor | None = None, **state: torch.Tensor):
        output, mask = self.stack.run(state, self.level)
        return self.model(features=self.model.pool_output(output, mask), labels=labels)


class CachedSet:
    """The frozen bottom's output for one list of examples, served as batches by `collate`."""

    def __init__(self, rows: list[torch.Tensor], batch: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]):
        self.batch = batch
        if len({r.shape for r in rows}) == 1:
            self.values, self.offsets = torch.stack(rows), None
        else:  # ragged rows (one per token) are kept unpadded, end to end, in one tensor
            self.values = torch.cat(rows)
            lengths = torch.tensor([len(r) for r in rows])
            self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def row(self, i: int) -> torch.Tensor:
        return self.values[i] if self.offsets is None else self.values[self.offsets[i]:self.offsets[i + 1]]

    def collate(self, items: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        """A batch of cached inputs (+ labels and example index), in place of the encoded batch."""
        index = [i for i, _ in items]
        batch = self.batch([self.row(i) for i in index])
        batch["_index"] = torch.tensor(index)
        if "labels" in items[0][1]:
            batch["labels"] = torch.tensor([f["labels"] for _, f in items])
        return batch


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the cached level's output is captured."""


class PhaseCache:
    """The cache of one phase: the module to train and the cached train and eval examples."""

    def __init__(self, model: nn.Module, point: CachePoint):
        self.point = point
        self.model = model
        self.stack = None if point.frozen is None else family_of(model.backbone).cache_stack(model.backbone)
        self.module = model if self.stack is None else UpperStack(model, self.stack, point.frozen + 1)
        self._sets: list[tuple[list[dict], CachedSet]] = []

    def dtype(self, amp_dtype: torch.dtype | None) -> torch.dtype:
        """Pooled vectors are tiny: fp32. Hidden states are stored in the autocast dtype (half the memory)."""
        return torch.float32 if self.stack is None or amp_dtype is None else amp_dtype

    @torch.no_grad()
    def rows(self, batch: dict, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per-example rows of the frozen bottom's output for one encoded batch (eval mode, no dropout)."""
        inputs = {k: v for k, v in batch.items() if not k.startswith("_") and k != "labels"}
        if self.stack is None:
            return list(self.model.features(**inputs).to("cpu", dtype))
        captured: list[torch.Tensor] = []

        def capture(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        hook = self.stack.capture(self.point.frozen + 1).register_forward_hook(capture)
        try:  # the official forward up to the cache point, stopped there by the hook
            self.model.features(**inputs)
        except _Stop:
            pass
        finally:
            hook.remove()
        return [row.to("cpu", dtype) for row in self.stack.rows(captured.pop(), inputs)]

    def collate_rows(self, rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"features": torch.stack(rows)} if self.stack is None else self.stack.batch(rows)

    def add(self, features: list[dict], batches: Iterable[dict], amp_dtype: torch.dtype | None,
            autocast: Callable[[], AbstractContextManager], budget: Callable[[int, int], bool]) -> bool:
        """Compute and keep the cache of one list of examples; False (nothing kept) once `budget(bytes so far,
        examples so far)` says the whole would not fit."""
        was_training = self.model.training
        self.model.eval()
        rows: list[torch.Tensor | None] = [None] * len(features)
        done, nbytes = 0, 0
        try:
            with ExitStack() as folding:
                for n, batch in enumerate(batches):
                    with autocast():
                        batch_rows = self.rows(batch, self.dtype(amp_dtype))
                    if n == 0 and amp_dtype is None:
                        self._fold_if_exact(batch, batch_rows, folding)
                    for i, row in zip(batch["_index"].tolist(), batch_rows, strict=True):
                        rows[i] = row
                    done += len(batch_rows)
                    nbytes += sum(r.numel() * r.element_size() for r in batch_rows)
                    if not budget(nbytes, done):
                        return False
        finally:
            self.model.train(was_training)
        self._sets.append((features, CachedSet(rows, self.collate_rows)))
        return True

    def _fold_if_exact(self, batch: dict, rows: list[torch.Tensor], folding: ExitStack) -> None:
        """Fold the batch norms into their convolutions (fold_batch_norm.py) for the fp32 passes still to come,
        in `folding`, if the folded model computes `rows` of this batch as the model did (else unfold at once)."""
        if not conv_bn_pairs(self.model):
            return
        folding.enter_context(batch_norms_folded(self.model))
        plain = torch.cat([r.flatten() for r in rows])
        folded = torch.cat([r.flatten() for r in self.rows(batch, torch.float32)])
        if (folded - plain).abs().max() > FOLD_TOLERANCE * plain.abs().max():
            folding.close()

    def get(self, features: list[dict]) -> CachedSet | None:
        """The cached set of exactly this list of examples (by identity), if it was added."""
        return next((c for f, c in self._sets if f is features), None)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for _, c in self._sets)


def build_phase_cache(model: nn.Module, groups: LayerGroups, learning: Iterable[str],
                      feature_lists: list[list[dict]], batches: Callable[[list[dict]], Iterable[dict]],
                      amp_dtype: torch.dtype | None, autocast: Callable[[], AbstractContextManager],
                      ) -> tuple[PhaseCache | None, str]:
    """The cache of a phase (None if the phase cannot use one or it would not fit) and a line saying so."""
    point = cache_point(model, groups, learning)
    if point is None:
        return None, ""
    cache = PhaseCache(model, point)
    total = sum(len(f) for f in feature_lists)
    kept, done_before = 0, 0

    def budget(nbytes: int, done: int) -> bool:
        # extrapolated from what is computed so far: examples of one run have similar sizes on average
        return (kept + nbytes) / max(done_before + done, 1) * total <= MAX_CACHE_BYTES

    start = time.perf_counter()
    for features in feature_lists:
        if not cache.add(features, batches(features), amp_dtype, autocast, budget):
            return None, (f"frozen-feature cache: skipped, {point.describe()} would take more than "
                          f"{MAX_CACHE_BYTES / 2**30:.0f} GiB (limit MAX_CACHE_BYTES); training uncached")
        kept, done_before = cache.nbytes, done_before + len(features)
    seconds = time.perf_counter() - start
    counts = " + ".join(f"{len(f):,}" for f in feature_lists)
    dtype = str(cache.dtype(amp_dtype)).replace("torch.", "")
    return cache, (f"frozen-feature cache: {point.describe()} of {counts} examples computed once in "
                   f"{seconds:.1f}s ({_size(cache.nbytes)} {dtype}); the phase trains on them")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"
