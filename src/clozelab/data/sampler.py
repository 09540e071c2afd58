"""A seeded, resumable, rank-aware sampler."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Permutes ``n`` items with (seed, epoch); rank r of w takes every w-th item (all ranks get the
    same count); ``start`` skips the first ``start`` items of this rank's order (resume mid-epoch).

    With batches of B per rank, the w ranks' k-th batches together hold items [k*B*w, (k+1)*B*w)
    of the permutation: the k-th batch of one process with batch size B*w, for any w.

    ``len()`` is always the whole epoch of this rank, also when ``start`` > 0: Lightning counts the
    batches of a resumed epoch from where it stopped, so the epoch must keep its full length for
    the run to end the epoch (and validate, and schedule) exactly where an uninterrupted run does.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world_size = rank, world_size
        self.start = start

    @property
    def start(self) -> int:
        return self._start

    @start.setter
    def start(self, value: int) -> None:
        if not 0 <= value <= len(self):
            raise ValueError(f"start={value} must lie in [0, {len(self)}] (items of this rank)")
        self._start = int(value)

    def _order(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        per_rank = self.n // self.world_size
        return order[self.rank : per_rank * self.world_size : self.world_size]

    def __iter__(self):
        return iter(self._order()[self._start :].tolist())

    def __len__(self) -> int:
        return self.n // self.world_size
