"""A seeded, resumable, rank-aware sampler."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Permutes ``n`` items with (seed, epoch); rank r of w takes every w-th item (all ranks get the
    same count); ``start`` skips items already consumed (resume mid-epoch)."""

    def __init__(self, n: int, seed: int, epoch: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, start: int = 0):  # fmt: skip
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start

    def _order(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def __iter__(self):
        return iter(self._order()[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.n // self.world_size - self.start, 0)
