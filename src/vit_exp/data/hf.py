"""Hugging Face datasets: a hub name ("imagenet-1k"), an `imagefolder` path, or a `save_to_disk` folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import IterableDataset

from vit_exp.data._bad_images import BAD_IMAGE_ERRORS, BadImages, SkippingImageDataset, decode
from vit_exp.data.order import rank_and_world_size
from vit_exp.data.transforms import Transform, open_image
from vit_exp.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "validation"}


def _open_cell(cell: dict, name: str) -> Image.Image:
    """Open an undecoded `datasets.Image` cell ({"bytes", "path"}) lazily."""
    if cell is None:
        raise OSError(f"no image in row {name}")
    return open_image(cell["bytes"] if cell.get("bytes") is not None else cell["path"])


def _label_fix(name: str) -> str:
    return (
        f"set num_classes to cover every label of {name!r}, or map this split to a labelled one with "
        "splits={...} (unlabelled test splits use -1)"
    )


def is_saved_to_disk(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets` save_to_disk."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


class HFDataset(SkippingImageDataset):
    """(uint8 image (3, H, W), int label) rows of a `datasets.Dataset`; unreadable images are skipped."""

    def __init__(self, ds: Any, image_column: str, label_column: str, transform: Transform | None, bad: BadImages):
        super().__init__(len(ds), transform, bad)
        self.ds, self.image_column, self.label_column = ds, image_column, label_column

    def _name(self, index: int) -> str:
        return f"{self.image_column}[{index}]"

    def _read(self, index: int) -> tuple[Image.Image, int]:
        row = self.ds[index]
        return _open_cell(row[self.image_column], self._name(index)), int(row[self.label_column])


class HFStreamDataset(IterableDataset):
    """Streams (uint8 image, int label) from a streaming `datasets.IterableDataset`.

    The stream is split by rank here and by DataLoader worker inside `datasets`. Ranks may see a few
    samples more or fewer than each other; for multi-GPU training on streams, prefer `ShardSource`,
    which gives every rank the same number of batches.
    """

    def __init__(
        self, ds: Any, source: HFSource, transform: Transform | None, bad: BadImages, length: int | None
    ) -> None:
        self.ds, self.transform, self.bad, self.length = ds, transform, bad, length
        self.name, self.num_classes = source.name_or_path, source.num_classes
        self.image_column, self.label_column = source.image_column, source.label_column

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("the size of this streamed split is unknown")
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        for i, row in enumerate(self.ds):
            label = int(row[self.label_column])
            if not 0 <= label < self.num_classes:
                raise ConfigError(
                    f"label {label} in row {i} is outside [0, {self.num_classes}); {_label_fix(self.name)}"
                )
            try:
                yield decode(_open_cell(row[self.image_column], f"row {i}"), self.transform), label
            except BAD_IMAGE_ERRORS as error:
                self.bad.skip(f"{self.name} row {i}", error)


class HFSource:
    """A Source over a Hugging Face dataset with an image column and an integer label column.

    Folders written by `save_to_disk` load with `datasets.load_from_disk`; anything else (a hub name,
    an image folder path) goes to `datasets.load_dataset(name_or_path, split=..., **load_kwargs)`.
    Splits load on first use. Images are decoded here, not by `datasets`, so JPEGs use draft mode.

    Args:
        name_or_path: Hub name, local path, or `save_to_disk` folder.
        image_column: Column holding the images.
        label_column: Column holding integer class ids.
        splits: Our split name ("train", "val", "test") -> the dataset's split name.
        num_classes: Needed when the label column is not a ClassLabel; checked against it otherwise.
        streaming: Stream the dataset instead of downloading it first.
        strict: Raise on an unreadable image instead of skipping it (see `num_skipped`).
        **load_kwargs: Passed on to `datasets.load_dataset` (e.g. data_dir, revision, cache_dir).
    """

    multi_label = False

    def __init__(
        self,
        name_or_path: str | Path,
        image_column: str = "image",
        label_column: str = "label",
        splits: Mapping[str, str] | None = None,
        num_classes: int | None = None,
        streaming: bool = False,
        strict: bool = False,
        **load_kwargs: Any,
    ) -> None:
        self.name_or_path = str(name_or_path)
        self.image_column, self.label_column = image_column, label_column
        self.splits = dict(DEFAULT_SPLITS if splits is None else splits)
        self.streaming = streaming
        self.load_kwargs = load_kwargs
        self._num_classes = num_classes
        self._class_names: list[str] | None = None
        self._bad = BadImages(strict)
        self._loaded: dict[str, Any] = {}
        self._features_checked = False

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far, all splits and DataLoader workers together."""
        return self._bad.num_skipped

    def load_split(self, split: str) -> Any:
        """The `datasets` split for our split name, loaded once, image column left undecoded."""
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; this source maps {sorted(self.splits)}")
        hf_split = self.splits[split]
        if hf_split in self._loaded:
            return self._loaded[hf_split]
        import datasets  # heavy; only when data is actually needed

        path = Path(self.name_or_path).expanduser()
        if is_saved_to_disk(path):
            if self.streaming:
                log.warning("streaming=True is ignored for the save_to_disk folder %s (it is memory-mapped)", path)
            saved = datasets.load_from_disk(str(path))
            if isinstance(saved, datasets.DatasetDict):
                if hf_split not in saved:
                    raise ConfigError(
                        f"{path} has splits {sorted(saved)}, not {hf_split!r}; map {split!r} to one of them "
                        f"with splits={{{split!r}: ...}}"
                    )
                saved = saved[hf_split]
            ds = saved
        else:
            try:
                ds = datasets.load_dataset(
                    self.name_or_path, split=hf_split, streaming=self.streaming, **self.load_kwargs
                )
            except ValueError as error:
                if "split" not in str(error).lower():
                    raise
                raise ConfigError(
                    f"{error}; map our split {split!r} to an existing one with splits={{{split!r}: ...}}"
                ) from error
        self._check_columns(ds)
        ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        self._loaded[hf_split] = ds
        return ds

    def _check_columns(self, ds: Any) -> None:
        """Check the columns exist and settle num_classes and class_names from a ClassLabel."""
        from datasets import ClassLabel

        features = ds.features
        if features is None:  # some streamed datasets only know their columns once read
            return
        for kind, column in (("image", self.image_column), ("label", self.label_column)):
            if column not in features:
                raise ConfigError(
                    f"{self.name_or_path!r} has no {kind} column {column!r}; its columns are {sorted(features)}; "
                    f"set {kind}_column"
                )
        if self._features_checked:
            return
        label = features[self.label_column]
        if isinstance(label, ClassLabel):
            if self._num_classes is not None and self._num_classes != label.num_classes:
                raise ConfigError(
                    f"num_classes={self._num_classes} but {self.name_or_path!r} labels {label.num_classes} "
                    "classes; drop num_classes or set it to match"
                )
            self._num_classes, self._class_names = label.num_classes, list(label.names)
        self._features_checked = True

    def _read_features(self) -> None:
        """Load the train split (else the first mapped one) once, for its ClassLabel."""
        if not self._features_checked:
            self.load_split("train" if "train" in self.splits else next(iter(self.splits)))

    @property
    def num_classes(self) -> int:
        """The num_classes given (checked against a ClassLabel on loading), else from the ClassLabel.

        Without a given num_classes this loads the train split, so give it to keep construction cheap.
        """
        if self._num_classes is None:
            self._read_features()
        if self._num_classes is None:
            raise ConfigError(
                f"the label column {self.label_column!r} of {self.name_or_path!r} is not a ClassLabel, so "
                "the number of classes is unknown; pass num_classes"
            )
        return self._num_classes

    @property
    def class_names(self) -> list[str] | None:
        """Names from the ClassLabel feature, else None."""
        self._read_features()
        return self._class_names

    def _check_labels(self, ds: Any, split: str) -> None:
        """Every label is in [0, num_classes): reads the label column only (memory-mapped arrow)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        labels = ds.select_columns([self.label_column]).with_format("arrow")[:][self.label_column]
        if not pa.types.is_integer(labels.type):
            raise ConfigError(
                f"label column {self.label_column!r} holds {labels.type}, not integer class ids; "
                "set label_column to the integer label column"
            )
        low, high = pc.min_max(labels).values()
        if low.as_py() is not None and (low.as_py() < 0 or high.as_py() >= self.num_classes):
            raise ConfigError(
                f"split {split!r} of {self.name_or_path!r} has labels in [{low}, {high}], outside "
                f"[0, {self.num_classes}); {_label_fix(self.name_or_path)}"
            )

    def dataset(self, split: str, transform: Transform | None = None) -> HFDataset | HFStreamDataset:
        """Dataset of (uint8 image (3, H, W), int label) for `split`; labels are range-checked first."""
        from datasets import Dataset
        from datasets.distributed import split_dataset_by_node

        ds = self.load_split(split)
        num_classes = self.num_classes
        if isinstance(ds, Dataset):  # map-style, also for save_to_disk folders when streaming=True
            self._check_labels(ds, split)
            return HFDataset(ds, self.image_column, self.label_column, transform, self._bad)
        rank, world_size = rank_and_world_size()
        if world_size > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
        log.info("streaming %s: labels are checked against %d classes as they arrive", split, num_classes)
        info = getattr(ds, "info", None)
        split_info = info.splits.get(self.splits[split]) if info is not None and info.splits else None
        length = split_info.num_examples // world_size if split_info is not None else None
        return HFStreamDataset(ds, self, transform, self._bad, length)
