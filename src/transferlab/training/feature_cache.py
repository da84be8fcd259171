"""Frozen-feature cache: when the bottom of a model stays frozen for a whole phase, compute its output once.

Two depths. Only the head learns: the pooled vector `model.features(...)` of every example is cached and
the head trains on it (`model(features=...)`). Embeddings + encoder layers 0..k-1 frozen (BERT-family
encoders): the hidden states after layer k-1 are cached, unpadded, and only layers k.., the pooling and the
head run. The frozen part is computed in eval mode (no dropout), so the cache is exact, not an approximation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers.masking_utils import create_bidirectional_mask

from transferlab.models.groups import LayerGroups
from transferlab.models.modeling_transferlab import pool

# families whose encoder layers are called as layer(hidden, mask) on `backbone.encoder.layer` (transformers 5)
PARTIAL_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
MAX_CACHE_BYTES = 4 * 2**30  # beyond this the phase trains uncached rather than risk running out of memory


@dataclass(frozen=True)
class CachePoint:
    """Where the frozen bottom of a phase ends: `layer` = first encoder layer that runs (None: only the head)."""

    layer: int | None

    def describe(self) -> str:
        if self.layer is None:
            return "pooled features (only the head learns)"
        frozen = "layer 0" if self.layer == 1 else f"layers 0-{self.layer - 1}"
        return f"hidden states after layer.{self.layer - 1} (embeddings and {frozen} frozen)"


def cache_point(model: nn.Module, groups: LayerGroups, learning: Iterable[str]) -> CachePoint | None:
    """Where a phase that trains the `learning` groups can start from cached outputs; None if it cannot."""
    if not (hasattr(model, "features") and hasattr(model, "head")):
        return None  # only sequence-level models (one pooled vector per example) have a cacheable bottom
    learning = set(learning)
    if learning <= {"head"}:
        return CachePoint(None)
    if model.backbone.config.model_type not in PARTIAL_FAMILIES or "embeddings" in learning:
        return None
    first = min((int(g.split(".")[1]) for g in learning if g.startswith("layer.")), default=groups.num_layers)
    return CachePoint(first) if first >= 1 else None


class UpperStack(nn.Module):
    """Encoder layers `start`.., pooling and head of a sequence model, run on cached hidden states."""

    def __init__(self, model: nn.Module, start: int):
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        backbone = self.model.backbone
        mask = create_bidirectional_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask)
        for layer in backbone.encoder.layer[self.start:]:
            hidden = layer(hidden, mask)
        pooling = self.model.config.pooling
        pooled = backbone.pooler(hidden) if pooling == "pooler" else pool(hidden, attention_mask, pooling)
        return self.model(features=pooled, labels=labels)


class CachedSet:
    """The frozen bottom's output for one list of examples, served as batches by `collate`."""

    def __init__(self, values: torch.Tensor, offsets: torch.Tensor | None):
        self.values = values  # (examples, hidden) pooled, or (tokens of all examples, hidden) concatenated
        self.offsets = offsets  # example i owns values[offsets[i]:offsets[i + 1]]; None for pooled vectors

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def collate(self, items: list[tuple[int, dict]]) -> dict[str, torch.Tensor]:
        """A batch of cached inputs (+ labels and example index), in place of the tokenized batch."""
        index = [i for i, _ in items]
        batch: dict[str, torch.Tensor] = {"_index": torch.tensor(index)}
        if "labels" in items[0][1]:
            batch["labels"] = torch.tensor([f["labels"] for _, f in items])
        if self.offsets is None:
            batch["features"] = self.values[index]
            return batch
        rows = [self.values[self.offsets[i]:self.offsets[i + 1]] for i in index]
        lengths = torch.tensor([len(r) for r in rows])
        batch["hidden"] = pad_sequence(rows, batch_first=True)
        batch["attention_mask"] = (torch.arange(batch["hidden"].shape[1]) < lengths[:, None]).long()
        return batch


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the cached layer's output is captured."""


@torch.no_grad()
def compute_cached_set(model: nn.Module, point: CachePoint, batches: Iterable[dict], n: int,
                       dtype: torch.dtype, autocast: Callable[[], AbstractContextManager]) -> CachedSet:
    """Run the frozen bottom once, in eval mode, over `n` examples given as tokenized batches with `_index`."""
    was_training = model.training
    model.eval()
    per_example: list[torch.Tensor | None] = [None] * n
    captured: list[torch.Tensor] = []
    hook = None
    if point.layer is not None:
        def capture(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        hook = model.backbone.encoder.layer[point.layer - 1].register_forward_hook(capture)
    try:
        for batch in batches:
            inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            with autocast():
                if point.layer is None:
                    rows = list(model.features(*inputs).to("cpu", dtype))
                else:
                    try:  # the official forward up to layer k-1, stopped there by the hook
                        model.features(*inputs)
                    except _Stop:
                        pass
                    keep = batch["attention_mask"].bool().cpu()
                    rows = [h[m] for h, m in zip(captured.pop().to("cpu", dtype), keep, strict=True)]
            for i, row in zip(batch["_index"].tolist(), rows, strict=True):
                per_example[i] = row
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    if point.layer is None:
        return CachedSet(torch.stack(per_example), None)
    lengths = torch.tensor([len(r) for r in per_example])
    return CachedSet(torch.cat(per_example), torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]))


class PhaseCache:
    """The cache of one phase: the module to train and the cached train and eval examples."""

    def __init__(self, model: nn.Module, point: CachePoint):
        self.point = point
        self.module = model if point.layer is None else UpperStack(model, point.layer)
        self.model = model
        self._sets: list[tuple[list[dict], CachedSet]] = []

    def dtype(self, amp_dtype: torch.dtype | None) -> torch.dtype:
        """Pooled vectors are tiny: fp32. Hidden states are stored in the autocast dtype (half the memory)."""
        return torch.float32 if self.point.layer is None or amp_dtype is None else amp_dtype

    def estimate_bytes(self, feature_lists: Iterable[list[dict]], amp_dtype: torch.dtype | None) -> int:
        """Memory the cache of these examples will take."""
        hidden = self.model.config.hidden_size
        per = torch.finfo(self.dtype(amp_dtype)).bits // 8 * hidden
        if self.point.layer is None:
            return sum(len(f) for f in feature_lists) * per
        return sum(len(x["input_ids"]) for f in feature_lists for x in f) * per

    def add(self, features: list[dict], batches: Iterable[dict], amp_dtype: torch.dtype | None,
            autocast: Callable[[], AbstractContextManager]) -> None:
        """Compute and keep the cache of one list of examples."""
        cached = compute_cached_set(self.model, self.point, batches, len(features), self.dtype(amp_dtype), autocast)
        self._sets.append((features, cached))

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
    need = cache.estimate_bytes(feature_lists, amp_dtype)
    if need > MAX_CACHE_BYTES:
        return None, (f"frozen-feature cache: skipped, {point.describe()} would take {need / 2**30:.1f} GiB "
                      f"(limit {MAX_CACHE_BYTES / 2**30:.0f} GiB); training uncached")
    start = time.perf_counter()
    for features in feature_lists:
        cache.add(features, batches(features), amp_dtype, autocast)
    seconds = time.perf_counter() - start
    counts = " + ".join(f"{len(f):,}" for f in feature_lists)
    dtype = str(cache.dtype(amp_dtype)).replace("torch.", "")
    return cache, (f"frozen-feature cache: {point.describe()} of {counts} examples computed once in "
                   f"{seconds:.1f}s ({_size(cache.nbytes)} {dtype}); the phase trains on them")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.0f} KiB"
