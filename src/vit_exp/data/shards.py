"""Sharded datasets: webdataset tar shards and parquet shards, single- or multi-label (JFT-style).

Tar shards follow timm's imagenet-1k-wds layout: one sample per key, e.g. `n0001.jpg` + `n0001.cls`
(an integer) or `n0001.json` ({"labels": [ids]} for multi-label). Parquet shards hold one row per
sample: encoded image bytes (or a Hugging Face {"bytes", "path"} struct) and an int or list label.

Training (``resumable=True``, the default) reads by index, in an order that is a function of (seed, epoch) and
resumes mid-epoch exactly (``vit_exp.data.stream``). Otherwise, and for evaluation, each rank streams its own shards
(shard i goes to rank i % world_size) and each DataLoader worker its own part of those; a training stream goes
through a shuffle buffer and restarts its epoch on resume. Training runs a fixed number of samples per rank
(repeating the data if need be), so every DDP rank runs the same number of batches.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vit_exp.data._bad_images import BAD_IMAGE_ERRORS, BadImages, decode
from vit_exp.data.order import rank_and_world_size
from vit_exp.data.shard_index import build_indices
from vit_exp.data.transforms import Transform, open_image

Sample = dict[str, Any]


def multi_hot(ids: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class ids -> float32 multi-hot vector of length num_classes.

    Raises:
        ValueError: if an id is outside [0, num_classes).
    """
    target = torch.zeros(num_classes, dtype=torch.float32)
    if len(ids):
        index = torch.as_tensor(ids, dtype=torch.int64)
        if index.min() < 0 or index.max() >= num_classes:
            raise ValueError(f"class ids {list(ids)} are outside [0, {num_classes}); set num_classes to cover them")
        target[index] = 1.0
    return target


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns ("train-{000000..000127}.tar") or a list of them -> the list of shard URLs."""
    from braceexpand import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    return [url for pattern in patterns for url in braceexpand(str(pattern))]


def _tar_samples(url: str) -> Iterator[Sample]:
    import webdataset as wds

    # webdataset opens local paths, http(s) and "pipe:" URLs; a broken tar raises instead of skipping
    yield from wds.tarfile_samples([{"url": url}])


def _parquet_samples(url: str) -> Iterator[Sample]:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if "://" in url:
        fs, path = pafs.FileSystem.from_uri(url)  # s3://, gs://, hdfs://, file://
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(url).resolve())
    with fs.open_input_file(path) as file:
        rows = 0
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield {**row, "__key__": str(row.get("key", rows)), "__url__": url}
                rows += 1


def read_shard(url: str) -> Iterator[Sample]:
    """Samples of one shard as dicts of fields plus "__key__" and "__url__"; tar or parquet by name."""
    return _parquet_samples(url) if url.endswith(".parquet") else _tar_samples(url)


def shuffle_buffer(samples: Iterable[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    """Approximate shuffle: keep `size` samples and emit a random one as each new one arrives."""
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _first_key(sample: Sample, keys: Sequence[str], what: str) -> Any:
    for key in keys:
        if key in sample:
            return key
    found = sorted(k for k in sample if not k.startswith("__"))
    raise ValueError(
        f"sample {sample.get('__key__')} of {sample.get('__url__')} has no {what} field among {list(keys)}; "
        f"its fields are {found}; set {what}_key"
    )


def parse_label(value: Any, key: str) -> int | list[int]:
    """A label field -> an int or a list of ids.

    Accepts an int, a list of ints, a dict {"labels": [...]} or {"label": i}, or their encodings in a tar
    file (b"3", or JSON when the field is "json").
    """
    if isinstance(value, (bytes, bytearray)):
        text = value.decode().strip()
        value = json.loads(text) if key.endswith("json") else int(text)
    if isinstance(value, dict):
        if "labels" not in value and "label" not in value:
            raise ValueError(f"label dict has keys {sorted(value)}; write {{'labels': [ids]}} or {{'label': id}}")
        value = value.get("labels", value.get("label"))
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return int(value)


class ShardDataset(IterableDataset):
    """Streams (uint8 image (3, H, W), target) from the shards of one rank.

    Targets are int class ids, or float32 multi-hot vectors when the source is multi-label.
    """

    def __init__(
        self,
        source: ShardSource,
        shards: list[str],
        transform: Transform | None,
        samples_per_rank: int | None,
        shuffle: bool,
        split: str,
    ) -> None:
        self.source, self.shards, self.transform = source, shards, transform
        self.samples_per_rank, self.shuffle, self.split = samples_per_rank, shuffle, split

    def __len__(self) -> int:
        """Samples this rank yields per epoch (whole batches when the source knows the batch size)."""
        if self.samples_per_rank is None:
            raise TypeError(f"split {self.split!r} is read once without a set size; give samples_per_epoch for it")
        return self.samples_per_rank

    def _quota(self, worker: int, num_workers: int) -> int:
        """This worker's share of the rank's samples, in whole batches when the batch size is known."""
        unit = self.source.batch_size or 1
        units = self.samples_per_rank // unit
        return (units // num_workers + (worker < units % num_workers)) * unit

    def _stream(self, shards: list[str], rng: random.Random, repeat: bool) -> Iterator[Sample]:
        """The worker's shards, once or pass after pass; each pass is shuffled on its own when training.

        Shuffling within a pass (shard order, then the buffer, drained at the end of the pass) means
        no sample comes again before every sample of the pass has come once.
        """
        while True:
            order = list(shards)
            if self.shuffle:
                rng.shuffle(order)
            samples = (sample for url in order for sample in read_shard(url))
            if self.shuffle:
                samples = shuffle_buffer(samples, self.source.shuffle_buffer, rng)
            count = 0
            for sample in samples:
                count += 1
                yield sample
            if not repeat:
                return
            if count == 0:
                raise ValueError(f"the shards {shards} hold no samples; check the files or the urls pattern")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards[worker::num_workers]
        # Workers get their own torch seed, redrawn for each epoch (persistent workers move on along
        # theirs), so the order differs per worker and epoch and still follows the run's seed.
        rng = random.Random(int(torch.empty((), dtype=torch.int64).random_()))
        quota = None if self.samples_per_rank is None else self._quota(worker, num_workers)
        if quota == 0:  # more workers than batches: this one has nothing to do
            return
        if quota and not shards:
            raise ValueError(
                f"DataLoader worker {worker} has no shard of split {self.split!r}: this rank has {len(self.shards)} "
                f"shards for {num_workers} workers; write more, smaller shards or use fewer workers"
            )
        done = 0
        for sample in self._stream(shards, rng, repeat=quota is not None):
            if quota is not None and done >= quota:
                return
            image, target = self.source.decode_sample(sample, self.transform)
            if image is not None:
                done += 1
                yield image, target


class ShardSource:
    """A Source over webdataset tar shards or parquet shards.

    Args:
        urls: Split ("train", "val", "test") -> brace pattern ("/data/train-{000000..001023}.tar") or list.
        num_classes: Number of classes (up to tens of thousands for multi-label).
        multi_label: Targets are multi-hot float vectors over num_classes (labels are id lists).
        samples_per_epoch: Split -> samples per epoch over all ranks; the stream repeats to reach it.
            Required for "train"; a split without it is read exactly once (evaluation; ranks may then
            run a few batches more or fewer than each other).
        shuffle_buffer: Encoded samples each training worker keeps for shuffling (memory: this times
            the mean file size, per worker).
        image_key: Candidate image fields, ";"-separated; the first present is used.
        label_key: Candidate label fields, ";"-separated ("cls": int; "json": {"labels": [ids]}).
        class_names: Optional class names, e.g. from the index.json written by `vit_exp.data.convert`.
        batch_size: The DataLoader's batch size; when given, every worker yields whole batches, so all
            batches are full and len(loader) is exact.
        rank: This process's rank; with world_size, overrides torch.distributed.
        world_size: Number of processes splitting the shards.
        strict: Raise on an unreadable image instead of skipping it (see `num_skipped`).
        resumable: Train in the indexed, resumable order (local tar files, or parquet anywhere pyarrow reads);
            False streams the shards through the shuffle buffer (any URL webdataset opens; no exact resume).
        mix: Resumable order: shards interleaved at a time (each worker keeps this many open).
        window: Resumable order: consecutive samples shuffled together.
        index_dir: Where tar shard indices are cached (None: ~/.cache/vit_exp/shard_index).
    """

    def __init__(
        self,
        urls: Mapping[str, str | Sequence[str]],
        num_classes: int,
        multi_label: bool = False,
        samples_per_epoch: Mapping[str, int] | None = None,
        shuffle_buffer: int = 2048,
        image_key: str = "jpg;jpeg;png;webp;image",
        label_key: str = "cls;json;label;labels",
        class_names: Sequence[str] | None = None,
        batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        strict: bool = False,
        resumable: bool = True,
        mix: int = 8,
        window: int = 1024,
        index_dir: str | Path | None = None,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}; make them agree")
        self.urls = dict(urls)
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.samples_per_epoch = dict(samples_per_epoch or {})
        self.shuffle_buffer = shuffle_buffer
        self.image_keys = image_key.split(";")
        self.label_keys = label_key.split(";")
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self._bad = BadImages(strict)
        self.resumable, self.mix, self.window = resumable, mix, window
        self.index_dir = Path(index_dir or "~/.cache/vit_exp/shard_index").expanduser()

    @classmethod
    def from_index(cls, index: str | Path, **overrides: Any) -> ShardSource:
        """A ShardSource over the shards listed in an index.json written by `vit_exp.data.convert`.

        urls, num_classes, multi_label, class_names and samples_per_epoch.train come from the index
        ("test" reads the "val" shards unless converted separately); keyword arguments override them.
        """
        path = Path(index).expanduser()
        if not path.is_file():
            raise ValueError(f"shard index {path} not found; write it with python -m vit_exp.data.convert")
        meta = json.loads(path.read_text())
        splits = meta["splits"]
        urls = {split: [str(path.parent / name) for name in info["shards"]] for split, info in splits.items()}
        if "val" in urls:
            urls.setdefault("test", urls["val"])
        found: dict[str, Any] = {
            "urls": urls,
            "num_classes": meta["num_classes"],
            "multi_label": meta["multi_label"],
            "class_names": meta["class_names"],
        }
        if "train" in splits:
            found["samples_per_epoch"] = {"train": splits["train"]["num_samples"]}
        return cls(**{**found, **overrides})

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far, all splits and DataLoader workers together."""
        return self._bad.num_skipped

    def skip(self, name: str, error: Exception) -> None:
        """Count an unreadable sample and warn, or raise naming it (strict)."""
        self._bad.skip(name, error)

    def target(self, label: int | list[int]) -> int | torch.Tensor:
        """A parsed label -> an int id (single-label) or a multi-hot float vector (multi-label)."""
        if self.multi_label:
            return multi_hot([label] if isinstance(label, int) else label, self.num_classes)
        if isinstance(label, list):
            if len(label) != 1:
                raise ValueError(f"a sample has {len(label)} labels {label}; set multi_label=True for such data")
            label = label[0]
        if not 0 <= label < self.num_classes:
            raise ValueError(f"label {label} is outside [0, {self.num_classes}); set num_classes to cover it")
        return label

    def decode_sample(self, sample: Sample, transform: Transform | None) -> tuple[torch.Tensor | None, Any]:
        """(uint8 image, target) of a raw sample; (None, None) when the image is unreadable and skipped."""
        label_key = _first_key(sample, self.label_keys, "label")
        try:
            target = self.target(parse_label(sample[label_key], label_key))
        except ValueError as error:
            raise ValueError(f"sample {sample['__key__']} of {sample['__url__']}: {error}") from error
        image = sample[_first_key(sample, self.image_keys, "image")]
        if isinstance(image, dict):  # Hugging Face parquet: {"bytes": ..., "path": ...}
            image = image.get("bytes") or image.get("path")
        try:
            return decode(open_image(image), transform), target
        except BAD_IMAGE_ERRORS as error:
            self._bad.skip(f"{sample['__key__']} in {sample['__url__']}", error)
            return None, None

    def dataset(self, split: str, transform: Transform | None = None) -> ShardDataset:
        """IterableDataset of (uint8 image (3, H, W), target) for this rank's shards of `split`."""
        if split not in self.urls:
            raise ValueError(f"no shards for split {split!r}; add urls.{split} (this source has {sorted(self.urls)})")
        shards = expand_urls(self.urls[split])
        # local files only: an http(s), gs:// or pipe: URL is opened (or not) when it is read
        missing = [u for u in shards if "://" not in u and not u.startswith("pipe:") and not Path(u).exists()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(shards)} shards of split {split!r} do not exist, the first {missing[0]}; "
                f"point urls.{split} at your shards (e.g. urls.{split}='/data/{split}-{{000000..000127}}.tar')"
            )
        total = self.samples_per_epoch.get(split)
        if split == "train" and self.resumable and total is not None:  # placed among the ranks later, by its loader
            return self._resumable(shards, transform, total)
        rank, world_size = rank_and_world_size(self.rank, self.world_size)
        if len(shards) < world_size:
            raise ValueError(
                f"split {split!r} has {len(shards)} shards for {world_size} ranks; every rank needs its own "
                "shards: write more, smaller shards (convert --shard-size)"
            )
        if split == "train" and total is None:
            raise ValueError(
                "set samples_per_epoch.train (e.g. the train count in the index.json written by "
                "vit_exp.data.convert): a fixed count per rank keeps all DDP ranks in step"
            )
        per_rank = None
        if total is not None:
            per_rank = total // world_size
            if self.batch_size:
                per_rank -= per_rank % self.batch_size
            if per_rank == 0:
                raise ValueError(
                    f"samples_per_epoch.{split}={total} leaves no full batch per rank for {world_size} ranks; raise it"
                )
        return ShardDataset(self, shards[rank::world_size], transform, per_rank, shuffle=split == "train", split=split)

    def _resumable(self, shards: list[str], transform: Transform | None, total: int) -> Any:
        from vit_exp.data.stream import ResumableShards

        # the training seed (seed_everything sets it), as the map-style order takes it (vit_exp.data.order)
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        indices = build_indices(shards, self.index_dir, self._bad)
        return ResumableShards(
            self, indices, transform, total, self.rank, self.world_size, self.batch_size or 1, seed, self.mix, self.window
        )  # batch_size: the unit dealt to loader workers (the datamodule passes the loader's; 1 for plain iteration)
