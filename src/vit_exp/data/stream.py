"""The resumable order of a sharded training set, and the ``IterableDataset`` that serves it.

The order of an epoch is a pure function of (seed, epoch, rank, world size) and the shards' sample counts, computed
from the shard indices (``vit_exp.data.shard_index``) without reading a sample:

1. shard order: a permutation of all shards for (seed, epoch); rank r takes every world-size'th one from r;
2. mixing: the rank's shards, ``mix`` at a time, are interleaved at random, each read front to back (so a tar is
   read forwards and a parquet row group once), then every ``window`` consecutive samples are shuffled;
3. passes: when ``samples_per_rank`` exceeds the rank's samples, further passes follow, each its own shuffle.

Batch b of a rank is samples ``[b * B, (b + 1) * B)`` of that order, and DataLoader worker w of W serves the batches
b = w, w + W, ...: the order a DataLoader yields (worker by worker, round-robin) is then the same with 0, 2 or 8
workers. Each sample's augmentation is seeded by (seed, epoch, shard, member, pass). A resume knows the batches
done, and starts from the next one by seeking to it (``ShardReader``): no sample before it is read.

Elastic resume (another number of ranks mid-epoch): the samples the old ranks had not reached are pooled and dealt
round-robin to the new ranks, in whole batches. The rest of the epoch is then served exactly once as a set (in
another order than an uninterrupted run's); what does not fill a whole batch on every rank (fewer than
world size x batch size samples), and with more ranks than before whatever exceeds the epoch's batch count, is left
out of that epoch, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from vit_exp.data.order import ResumableStream, _mix, rank_and_world_size, torch_seeded
from vit_exp.data.shard_index import READ_ERRORS, ShardIndex, ShardReader
from vit_exp.data.transforms import Transform

Segment = tuple[int, int, int, int]  # world size, batch size, samples per rank, batches done


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def _one_pass(shards: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, mix: int, window: int) -> np.ndarray:
    """(shard, member) of one pass over ``shards``: groups of ``mix`` interleaved, then shuffled ``window`` by
    ``window``."""
    parts = []
    for g in range(0, len(shards), mix):
        group = shards[g : g + mix]
        label = rng.permutation(np.repeat(group, sizes[group]))  # a random interleaving of the group's shards
        member = np.empty_like(label)
        for s in group:
            member[label == s] = np.arange(sizes[s])  # each shard front to back
        parts.append(np.column_stack([label, member]))
    block = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    return block[np.lexsort((rng.random(len(block)), np.arange(len(block)) // window))]


def rank_order(
    sizes: Sequence[int], seed: int, epoch: int, rank: int, world_size: int, num_samples: int, mix: int, window: int
) -> np.ndarray:
    """This rank's epoch: ``num_samples`` rows of (shard, member, pass), int64, in the order they are served.

    Raises:
        ValueError: the rank's shards hold no sample.
    """
    sizes = np.asarray(sizes, np.int64)
    shards = _rng(seed, epoch).permutation(len(sizes))[rank::world_size]
    if sizes[shards].sum() == 0:
        raise ValueError(f"the shards of rank {rank} hold no samples; check the files or the urls pattern")
    parts, have, p = [], 0, 0
    while have < num_samples:
        rng = _rng(seed, epoch, rank, p)
        block = _one_pass(shards if p == 0 else rng.permutation(shards), sizes, rng, mix, window)
        parts.append(np.column_stack([block, np.full(len(block), p, np.int64)]))
        have, p = have + len(block), p + 1
    return np.concatenate(parts)[:num_samples]


def deal(pool: int, world_size: int, batch_size: int, max_batches: int) -> int:
    """Samples per rank when ``pool`` samples are dealt to ``world_size`` ranks in whole batches, at most
    ``max_batches`` each."""
    return max(0, min(pool // world_size // batch_size, max_batches)) * batch_size


def epoch_rest(
    sizes: Sequence[int], seed: int, epoch: int, rank: int, segments: Sequence[Segment], mix: int, window: int
) -> np.ndarray:
    """The samples this rank has still to serve in ``epoch``, after ``segments`` (the last one is the current
    number of ranks; see ``ResumableStream``), as rows of (shard, member, pass)."""
    (world, batch, samples, done), *later = segments
    orders = [rank_order(sizes, seed, epoch, r, world, samples, mix, window) for r in ([rank] if not later else range(world))]
    if not later:
        return orders[0][done * batch :]
    pool = np.concatenate([order[done * batch :] for order in orders])
    for i, (world, batch, samples, done) in enumerate(later):
        shares = [pool[r::world][:samples] for r in range(world)]  # round-robin: the old ranks' rests interleave
        if i == len(later) - 1:
            return shares[rank][done * batch :]
        pool = np.concatenate([share[done * batch :] for share in shares])
    raise AssertionError("unreachable")


class ResumableShards(ResumableStream):
    """Streams (uint8 image (3, H, W), target) of one rank's epoch in the order of ``rank_order``; resumable.

    Args:
        source: The ``ShardSource`` (decoding, targets, the bad-sample policy).
        indices: The index of every shard of the split (all ranks': the shard order covers them all).
        transform: The training transform.
        total: Samples per epoch over all ranks (each rank runs ``total // world_size`` in whole batches).
        rank: This process's rank; with world_size, overrides torch.distributed.
        world_size: Number of ranks.
        batch_size: The loader's batch size (workers are dealt whole batches).
        seed: Seed of the order and the augmentation.
        mix: Shards interleaved at a time.
        window: Consecutive samples shuffled together.
    """

    def __init__(
        self,
        source: Any,
        indices: Sequence[ShardIndex],
        transform: Transform | None,
        total: int,
        rank: int | None,
        world_size: int | None,
        batch_size: int,
        seed: int,
        mix: int,
        window: int,
    ) -> None:
        super().__init__()
        self.source, self.indices, self.transform = source, list(indices), transform
        self.sizes = np.array([len(index) for index in self.indices], np.int64)
        self.total, self.rank, self.world_size = total, rank, world_size
        self.batch_size, self.seed, self.mix, self.window = batch_size, seed, mix, window
        self.samples_per_rank: int | None = None
        if rank is not None or world_size is not None:
            self.place()

    def place(self) -> None:
        """Take this process's rank among the training processes (once, in the main process: the run builds its
        data before Lightning starts the process group, and loader workers have none).

        Raises:
            ValueError: fewer shards than ranks, or no whole batch per rank.
        """
        if self.samples_per_rank is not None:
            return
        self.rank, self.world_size = rank_and_world_size(self.rank, self.world_size)
        if len(self.indices) < self.world_size:
            raise ValueError(
                f"{len(self.indices)} training shards for {self.world_size} ranks; every rank needs its own "
                "shards: write more, smaller shards (convert --shard-size)"
            )
        per_rank = self.total // self.world_size
        self.samples_per_rank = per_rank - per_rank % self.batch_size
        if self.samples_per_rank == 0:
            raise ValueError(
                f"samples_per_epoch.train={self.total} leaves no full batch per rank for {self.world_size} ranks; raise it"
            )

    def __len__(self) -> int:
        """Samples this rank runs per epoch; before ``place``, the epoch's over all ranks (as a map-style data set's
        length is), in whole batches."""
        if self.samples_per_rank is None:
            return self.total - self.total % self.batch_size
        return self.samples_per_rank

    def plan_resume(self, epoch: int, segments: list[Segment]) -> list[Segment]:
        """Add a segment when the world size or the batch size changed since the checkpoint (elastic resume)."""
        world, batch, samples, done = segments[-1]
        if (world, batch) == (self.world_size, self.batch_size):
            if samples != self.samples_per_rank and len(segments) == 1:
                raise ValueError(
                    f"the checkpoint's epoch has {samples} samples per rank, this run {self.samples_per_rank}: "
                    "resume with the samples_per_epoch and batch size it was saved with"
                )
            return segments
        pool = world * (samples - done * batch)
        start = sum(d for *_, d in segments)
        regular = self.samples_per_rank // self.batch_size
        share = deal(pool, self.world_size, self.batch_size, regular - start)
        if left := pool - share * self.world_size:
            if self.rank == 0:
                warnings.warn(
                    f"elastic resume from {world} to {self.world_size} ranks: {left} of the {pool} samples left in "
                    f"epoch {epoch} are not served in it (they fill no whole batch on every rank, or exceed its "
                    f"{regular} batches)"
                )
        return [*segments, (self.world_size, self.batch_size, share, 0)]

    def _order(self) -> np.ndarray:
        segments = self.segments() or [(self.world_size, self.batch_size, self.samples_per_rank, 0)]
        return epoch_rest(self.sizes, self.seed, self.epoch, self.rank, segments, self.mix, self.window)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        self.place()  # a no-op when a loader placed it (always, in a worker)
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = self._order()
        epoch_key = _mix(_mix(self.seed) ^ self.epoch)
        columns = [*self.source.image_keys, *self.source.label_keys]
        reader = ShardReader(self.indices, columns, cache=2 * self.mix + 2)
        try:
            for b in range(worker, len(order) // self.batch_size, num_workers):
                for i in range(b * self.batch_size, (b + 1) * self.batch_size):
                    yield self._read(order, i, reader, epoch_key)
        finally:
            reader.close()

    def _read(self, order: np.ndarray, i: int, reader: ShardReader, epoch_key: int) -> tuple[torch.Tensor, Any]:
        """Sample i of the order; an unreadable one is replaced by the next readable one of the order (so the batches
        keep their size and place: the resume position stays a batch count), each counted in ``num_skipped``."""
        for attempt in range(len(order)):
            shard, member, p = (int(v) for v in order[(i + attempt) % len(order)])
            try:
                sample = reader.sample(shard, member)
            except READ_ERRORS as error:
                self.source.skip(f"{self.indices[shard].keys[member]} in {self.indices[shard].url}", error)
                continue
            with torch_seeded(_mix(epoch_key ^ _mix((shard << 32 | member) ^ p << 56)) >> 1):
                image, target = self.source.decode_sample(sample, self.transform)
            if image is not None:
                return image, target
        raise ValueError(f"no sample of rank {self.rank}'s epoch can be read; check the shards")
