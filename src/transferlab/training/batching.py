"""Length-grouped batches: similar lengths together so dynamic padding wastes little compute."""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples; the order depends only on (seed, epoch key)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, shuffle: bool = True,
                 group_by_length: bool = True, mega_batch_factor: int = 50):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega = batch_size * mega_batch_factor
        self.key = 0

    def use_epoch(self, key: int) -> None:
        """Select the permutation for one epoch (resume re-creates it from the same key).

        Not named `set_epoch`: accelerate would call that with its own iteration counter."""
        self.key = key

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            indices.sort(key=lambda i: self.lengths[i])
            yield from (indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size))
            return
        rng = random.Random(self.seed * 1_000_003 + self.key)
        rng.shuffle(indices)
        if self.group_by_length:
            # sort within shuffled mega-batches: batches stay random, padding stays small
            indices = [i for s in range(0, len(indices), self.mega)
                       for i in sorted(indices[s:s + self.mega], key=lambda i: -self.lengths[i])]
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        rng.shuffle(batches)
        yield from batches
