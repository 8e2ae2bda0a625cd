"""A seeded, distributed-aware sampler that can resume in the middle of an epoch."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of one process's share of an epoch, in full batches, resumable mid-epoch.

    Each epoch is a permutation drawn from ``torch.Generator().manual_seed(seed + epoch)``
    (the global RNG is never touched). As in ``DistributedSampler``, the order is padded
    by repeating its start to a multiple of ``world_size`` and rank ``r`` takes positions
    ``r::world_size``; with ``drop_last`` the incomplete last batch of a rank is dropped,
    so every rank takes the same number of steps. Without ``pad`` (evaluation) nothing is
    repeated and ranks may get one sample more or less than others.

    Args:
        size: samples in the dataset.
        batch_size: samples per batch (the unit of ``skip_batches``).
        shuffle: permute each epoch; otherwise ``0..size-1`` in order.
        seed: base seed of the permutations.
        rank: this process's rank (default 0).
        world_size: number of processes (default 1).
        drop_last: drop this rank's incomplete last batch.
        pad: pad the order to a multiple of ``world_size`` (only matters when > 1).
    """

    def __init__(self, size: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 pad: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size, self.batch_size = size, batch_size
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.drop_last, self.pad = drop_last, pad
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and how many of its batches were already seen.

        Args:
            epoch: the epoch (0-based).
            skip_batches: batches of this epoch to leave out (resuming after them).
        """
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise ValueError(f"skip_batches={skip_batches} is not in "
                             f"[0, {self.batches_per_epoch}] batches per epoch")
        self.epoch, self.skip = epoch, skip_batches

    @property
    def samples_per_rank(self) -> int:
        """Samples this rank draws from a whole epoch before batching."""
        if self.pad:
            return -(-self.size // self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    @property
    def batches_per_epoch(self) -> int:
        """Batches of this rank in a whole epoch (without ``drop_last`` the last may be short)."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's whole-epoch indices (nothing skipped)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and order:
            total = self.samples_per_rank * self.world_size
            while len(order) < total:  # tiny datasets may need more than one repeat
                order += order[:total - len(order)]
        mine = order[self.rank::self.world_size]
        if self.drop_last:
            mine = mine[:self.batches_per_epoch * self.batch_size]
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.skip * self.batch_size:])

    def __len__(self) -> int:
        whole = self.samples_per_rank
        if self.drop_last:
            whole = self.batches_per_epoch * self.batch_size
        return max(0, whole - self.skip * self.batch_size)

    def batch_sizes(self) -> list[int]:
        """Sizes of the batches the current (possibly skipped) epoch yields."""
        n, bs = len(self), self.batch_size
        return [bs] * (n // bs) + ([n % bs] if n % bs else [])
