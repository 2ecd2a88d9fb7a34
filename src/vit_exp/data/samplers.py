"""Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019), as DeiT trains: each image appears
``repeats`` times per epoch, each copy on another rank (so with another augmentation), while an epoch keeps
the length of an ordinary one."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data.distributed import DistributedSampler


class RepeatedAugSampler(DistributedSampler):
    """Per-epoch shuffle in which every index is repeated ``repeats`` times and dealt round-robin to ranks.

    It subclasses ``DistributedSampler`` (without its constructor) because it already splits the data by
    rank: Lightning leaves such samplers alone instead of wrapping them in another distributed sampler.

    Args:
        num_samples: Dataset length.
        repeats: Copies of each image per epoch (DeiT: 3).
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed; epoch ``e`` shuffles with ``seed + e`` (``set_epoch``), the same on every rank.
    """

    def __init__(self, num_samples: int, repeats: int = 3, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if repeats < 1:
            raise ValueError(f"repeated augmentation needs repeats >= 1, got {repeats}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.repeats, self.seed = num_samples, repeats, seed
        self.rank, self.num_replicas = rank, world_size
        self.epoch = 0
        # Each rank draws as many as an ordinary distributed epoch would: the repeats replace distinct images.
        self.per_rank = math.ceil(num_samples / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).repeat_interleave(self.repeats)
        total = self.per_rank * self.num_replicas
        if len(order) < total:  # very small data: wrap around
            order = order.repeat(math.ceil(total / len(order)))
        return iter(order[self.rank : total : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank
