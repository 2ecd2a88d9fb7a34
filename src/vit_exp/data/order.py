"""The resumable training order: which image each process draws, in which order, with which augmentation seed.

The train order is a function of (seed, epoch), each sample's augmentation a function of (seed, epoch, its place
in the epoch), and the loader's position in the epoch is part of the checkpoint (Lightning saves loaders that have
``state_dict``/``load_state_dict``), so a run killed mid-epoch and resumed ends bit for bit where an
uninterrupted one does, whatever the number of loader workers. Sharded sources do the same as a ``ResumableStream``
(``vit_exp.data.stream``); other streamed ones (HF streaming, ``ShardSource(resumable=False)``) split by
``rank_and_world_size`` and restart their epoch's stream on resume instead.

- ``rank_and_world_size``: where this process sits among the training processes.
- ``ResumableSampler``: a shuffle of (seed, epoch) that can start part-way through an epoch.
- ``RepeatedAugSampler``: DeiT's repeated augmentation, as a ``ResumableSampler``.
- ``SeededSamples``: each draw augmented with its own seed (``torch_seeded``).
- ``ResumableStream``: an ``IterableDataset`` whose epoch and position reach its loader workers.
- ``ResumableLoader`` / ``resumable_loader``: a DataLoader whose position is saved with the checkpoint.

Plain torch: the Lightning side of an exact resume (random generators, the hand-over of the loader state) is
``vit_exp.callbacks.ExactResume``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler


def rank_and_world_size(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the given values, else torch.distributed's when initialised, else (0, 1).

    Call it in the main process: DataLoader workers do not inherit the process group.
    """
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size}); pass 0 <= rank < world_size")
        return rank, world_size
    if rank is not None or world_size is not None:
        raise ValueError("pass both rank and world_size, or neither to take them from torch.distributed")
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(DistributedSampler):
    """Shuffled indices that depend only on (seed, epoch), each process taking every world-size'th one, and
    which can start part-way through an epoch (``resume``).

    A ``DistributedSampler``, so Lightning uses it as it is under DDP instead of wrapping it in its own. With
    ``keyed=True`` it yields ``(index, sample_seed)`` pairs for a ``SeededSamples`` data set: each draw's
    augmentation seed is a function of (seed, epoch, its place in the epoch).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        keyed: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # indices of this epoch (for this process) already consumed
        self.keyed = keyed

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a resume position belongs to the epoch it was saved in
        super().set_epoch(epoch)

    def resume(self, epoch: int, start: int) -> None:
        """Make the next iteration the rest of ``epoch``, from its ``start``-th index on."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This process's indices of the current epoch, in order (the sampling rule; subclasses change it)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Any]:
        indices = self.indices()
        start, self.start = self.start, 0
        if not self.keyed:
            return iter(indices[start:])
        epoch_key = _mix(_mix(self.seed) ^ self.epoch)
        # this process's k-th index is the epoch's (rank + k * num_replicas)-th draw (DistributedSampler's stride)
        places = range(self.rank + start * self.num_replicas, self.total_size, self.num_replicas)
        return iter([(index, _mix(epoch_key ^ place) >> 1) for index, place in zip(indices[start:], places)])


def _mix(x: int) -> int:
    """splitmix64's finaliser: well-spread 64-bit seeds from consecutive integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class RepeatedAugSampler(ResumableSampler):
    """Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019), as DeiT trains: a per-epoch shuffle in which
    every index is repeated ``repeats`` times and dealt round-robin to ranks, so each copy lands on another rank
    (with another augmentation), while an epoch keeps the length of an ordinary one.

    A ``DistributedSampler``, because it already splits the data by rank: Lightning leaves such samplers alone
    instead of wrapping them in another one. A ``ResumableSampler``: a run resumes mid-epoch where it stopped.

    Args:
        num_samples: Dataset length.
        repeats: Copies of each image per epoch (DeiT: 3).
        rank: This process's rank.
        world_size: Number of processes.
        seed: Base seed; epoch ``e`` shuffles with ``seed + e`` (``set_epoch``), the same on every rank.
        keyed: Yield ``(index, sample_seed)`` pairs for ``SeededSamples`` (each copy of an image then has its own
            augmentation seed).
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


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` is ``dataset[index]`` drawn with torch's generator seeded by ``seed``.

    So a sample's random augmentation (crop, flip, RandAugment: torch's generator) depends on the run's seed,
    the epoch and its place in the epoch only: not on the number of loader workers, nor on which worker drew
    it, nor on where a resumed run started. A resume mid-epoch then gives the same images, whatever
    ``num_workers``. The generator's state is put back afterwards: the caller's (the main process's, with
    ``num_workers=0``) is left as it was. A plain index (a replaced sampler) is passed through.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        with torch_seeded(seed):
            return self.dataset[index]

    def __getitems__(self, items: list[Any]) -> list[Any]:
        """A batch (the DataLoader's fetcher calls this where it exists): each sample drawn with its own seed, as
        ``__getitem__`` draws it, but the generator's state (5 KB) saved and put back once per batch, not once per
        sample (0.1 ms of the default run's ~30 ms step)."""
        if not all(isinstance(item, tuple) for item in items):  # plain indices draw from the caller's generator
            return [self[item] for item in items]
        samples = []
        with torch_generator_kept() as generator:
            for index, seed in items:
                generator.manual_seed(seed)
                samples.append(self.dataset[index])
        return samples


@contextlib.contextmanager
def torch_generator_kept() -> Iterator[torch.Generator]:
    """Torch's CPU generator, whose state is put back after the block (whatever it was seeded with inside)."""
    # The CPU generator alone, which the transforms draw from: torch.manual_seed would also queue a seeding of
    # every CUDA device, at 40x the cost per sample.
    generator = torch.default_generator
    state = generator.get_state()
    try:
        yield generator
    finally:
        generator.set_state(state)


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Within the block, torch's CPU generator is seeded with ``seed``; its state is put back afterwards."""
    with torch_generator_kept() as generator:
        generator.manual_seed(seed)
        yield


class ResumableStream(IterableDataset):
    """An ``IterableDataset`` that serves an epoch from a saved position, as a ``ResumableLoader``'s dataset.

    DataLoader workers hold copies of the dataset (persistent ones made once, at the first epoch), so the epoch and
    the position live in a shared-memory tensor that every copy reads when its iteration starts: ``[epoch, segments,
    then 4 numbers per segment]``. A segment is a stretch of the epoch run on one number of ranks: (world size, batch
    size, samples per rank, batches done); more than one after an elastic resume (``vit_exp.data.stream``).
    Subclasses set ``batch_size`` and ``world_size`` and read ``epoch`` and ``segments()`` in ``__iter__``.
    """

    MAX_SEGMENTS = 8
    batch_size: int
    world_size: int

    def __init__(self) -> None:
        self._shared = torch.zeros(2 + 4 * self.MAX_SEGMENTS, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._shared[1:] = 0  # a resume position belongs to the epoch it was saved in
        self._shared[0] = epoch

    def segments(self) -> list[tuple[int, int, int, int]]:
        """The epoch's earlier stretches on other numbers of ranks, then the current one's (its 4th: batches done)."""
        values = self._shared.tolist()
        return [tuple(values[2 + 4 * i : 6 + 4 * i]) for i in range(values[1])]  # type: ignore[misc]

    @property
    def start(self) -> int:
        """Batches of the current epoch already consumed (all segments together)."""
        return sum(done for *_, done in self.segments())

    def resume(self, epoch: int, segments: list[tuple[int, int, int, int]]) -> None:
        """Make the next iteration the rest of ``epoch`` after ``segments``."""
        if len(segments) > self.MAX_SEGMENTS:
            raise ValueError(f"{len(segments)} resumes on other numbers of ranks within one epoch; at most {self.MAX_SEGMENTS}")
        self._shared.zero_()
        self._shared[0], self._shared[1] = epoch, len(segments)
        for i, segment in enumerate(segments):
            self._shared[2 + 4 * i : 6 + 4 * i] = torch.tensor(segment)

    def place(self) -> None:
        """Take this process's place among the ranks, if not yet done (the loader calls it in the main process)."""

    def plan_resume(self, epoch: int, segments: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
        """The segments to resume with, given the saved ones (the last one's batches done filled in): the same when
        the world size and batch size are unchanged; subclasses add a segment for an elastic resume."""
        return segments


class _EpochSampler(Sampler):
    """The placeholder sampler of a DataLoader over an IterableDataset (endless None) that hands ``set_epoch``, which
    Lightning calls on the loader's samplers at each epoch's start, to the dataset."""

    def __init__(self, dataset: ResumableStream) -> None:
        self.dataset = dataset

    def __iter__(self) -> Iterator[None]:
        while True:
            yield None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class ResumableLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler`` whose position in the epoch is saved with the checkpoint.

    Lightning stores ``state_dict()`` of train loaders that have one and hands it back to ``load_state_dict``
    on resume; the next epoch then yields only the batches not yet trained on. ``len()`` stays the full epoch,
    which is what Lightning's resumed batch count expects. Lightning does not prefetch from sized loaders, so
    the batches yielded are the batches trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = 0  # batches of the current epoch yielded so far
        if isinstance(self.dataset, ResumableStream):
            self.dataset.place()  # made after the process group started, unlike the data set
            if self.dataset.batch_size != self.batch_size:
                raise ValueError(
                    f"the stream deals batches of {self.dataset.batch_size} to the loader workers but the loader's "
                    f"batch_size is {self.batch_size}; give the source the loader's batch_size"
                )
            # Lightning calls set_epoch on the loader's samplers, and a loader over an IterableDataset takes none
            self.batch_sampler.sampler = _EpochSampler(self.dataset)

    def __iter__(self) -> Iterator[Any]:  # a generator: the sampler is read at the first batch, after set_epoch
        self._position = self.start_position()
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def start_position(self) -> int:
        """Batches of the current epoch already trained on when its iteration starts (after a resume, not 0)."""
        if isinstance(self.dataset, ResumableStream):
            return self.dataset.start
        sampler = self.sampler
        return (sampler.start if isinstance(sampler, ResumableSampler) else 0) // self.batch_size

    def state_dict(self) -> dict[str, Any]:
        return self.state_dict_at(self._position)

    def state_dict_at(self, position: int) -> dict[str, Any]:
        """The state to resume from after ``position`` batches of the current epoch; ``state_dict`` is this at the
        batches yielded so far. A wrapper that prefetches (torch_xla's ``MpDeviceLoader``) gives the batches it
        handed on (``vit_exp.xla.ResumableMpDeviceLoader``)."""
        if isinstance(self.dataset, ResumableStream):
            *done, (world, batch, samples, _) = self.dataset.segments() or [(*self._segment(), 0)]
            finished = sum(d for *_, d in done)
            return {"epoch": self.dataset.epoch, "batches": position,
                    "segments": [list(s) for s in done] + [[world, batch, samples, position - finished]]}  # fmt: skip
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        return {"epoch": self.sampler.epoch, "batches": position}

    def _segment(self) -> tuple[int, int, int]:
        stream = self.dataset
        return stream.world_size, stream.batch_size, len(stream)  # type: ignore[arg-type]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if isinstance(self.dataset, ResumableStream):
            if "segments" not in state:  # saved by a map-style loader: another data set
                warnings.warn("the checkpoint's train loader position is not a stream's: the epoch restarts")
                return
            segments = [tuple(int(v) for v in s) for s in state["segments"]]
            self.dataset.resume(state["epoch"], self.dataset.plan_resume(state["epoch"], segments))  # type: ignore[arg-type]
            return
        if not isinstance(self.sampler, ResumableSampler):
            if rank_and_world_size()[0] == 0:  # once per job, not once per rank
                warnings.warn("the train loader's sampler was replaced (e.g. overfit_batches): it restarts its epoch")
            return
        self.sampler.resume(state["epoch"], state["batches"] * self.batch_size)


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int | None = None,
    sampler: ResumableSampler | None = None,
    **kwargs: Any,
) -> ResumableLoader:
    """A shuffled ``ResumableLoader`` of ``dataset`` for this process (its share under DDP), each sample
    augmented with its own seed (``SeededSamples``).

    Args:
        dataset: A map-style data set, or a ``ResumableStream`` (which orders itself: seed and sampler unused).
        batch_size: Images per process and step.
        seed: Seed of the order; None: the training seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), as
            Lightning's own distributed sampler does.
        sampler: Another sampling rule (e.g. ``RepeatedAugSampler``); None: a plain shuffle of this process's
            share. It is made to yield keyed indices, which the ``SeededSamples`` wrapper here reads.
        **kwargs: Other ``DataLoader`` arguments (num_workers, drop_last, pin_memory, ...).
    """
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) if seed is None else seed
    # Its own generator: creating the iterator then draws no number from the global RNG, whose state ExactResume
    # restores on resume and which dropout and drop-path use.
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, ResumableStream):  # it orders itself; a loader over an IterableDataset takes no sampler
        return ResumableLoader(dataset, batch_size=batch_size, generator=generator, **kwargs)
    rank, world_size = rank_and_world_size()
    if sampler is None:
        sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    sampler.keyed = True
    return ResumableLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
