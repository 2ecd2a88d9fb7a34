"""Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019), as DeiT trains: each image appears
``repeats`` times per epoch, each copy on another rank (so with another augmentation), while an epoch keeps
the length of an ordinary one."""

from __future__ import annotations

import math

import torch

from vit_exp.resilience import ResumableSampler


class RepeatedAugSampler(ResumableSampler):
    """Per-epoch shuffle in which every index is repeated ``repeats`` times and dealt round-robin to ranks.

    A ``DistributedSampler``, because it already splits the data by rank: Lightning leaves such samplers alone
    instead of wrapping them in another one. A ``ResumableSampler``: a run resumes mid-epoch where it stopped.

    Args:
        num_samples: Dataset length.
        repeats: Copies of each image per epoch (DeiT: 3).
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed; epoch ``e`` shuffles with ``seed + e`` (``set_epoch``), the same on every rank.
        keyed: Yield ``(index, sample_seed)`` pairs for ``vit_exp.resilience.SeededSamples`` (each copy of an
            image then has its own augmentation seed).
    """

    def __init__(
        self, num_samples: int, repeats: int = 3, rank: int = 0, world_size: int = 1, seed: int = 0, keyed: bool = False
    ) -> None:
        if repeats < 1:
            raise ValueError(f"repeated augmentation needs repeats >= 1, got {repeats}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        super().__init__(range(num_samples), num_replicas=world_size, rank=rank, seed=seed, keyed=keyed)
        self.n, self.repeats = num_samples, repeats
        # Each rank draws as many as an ordinary distributed epoch would: the repeats replace distinct images.
        self.per_rank = math.ceil(num_samples / world_size)
        self.num_samples, self.total_size = self.per_rank, self.per_rank * world_size

    def indices(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).repeat_interleave(self.repeats)
        if len(order) < self.total_size:  # very small data: wrap around
            order = order.repeat(math.ceil(self.total_size / len(order)))
        return order[self.rank : self.total_size : self.num_replicas].tolist()

    def __len__(self) -> int:
        return self.per_rank
