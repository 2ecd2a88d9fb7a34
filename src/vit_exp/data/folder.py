"""Images in class folders, ImageNet layout: root/train/<class>/*.JPEG, root/val/<class>/*.JPEG."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from vit_exp.data._bad_images import BadImages, SkippingImageDataset
from vit_exp.data.transforms import Transform, open_image
from vit_exp.errors import ConfigError

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "val"}
CACHE_VERSION = 1


def _scan_split(split_dir: Path) -> dict:
    """List a split folder: {"classes": {class: [file names]}, "ignored": int, "example": str}."""
    classes: dict[str, list[str]] = {}
    ignored, example, loose_images = 0, "", 0
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # OS and tool noise (.DS_Store, our own cache)
        if not entry.is_dir():
            loose_images += entry.name.lower().endswith(IMG_EXTENSIONS)
            ignored += 1
            example = example or entry.path
            continue
        names = []
        for file in os.scandir(entry.path):
            if file.name.startswith("."):
                continue
            if file.name.lower().endswith(IMG_EXTENSIONS):
                names.append(file.name)
            else:
                ignored += 1
                example = example or file.path
        classes[entry.name] = sorted(names)
    if loose_images and not classes:
        raise ConfigError(
            f"{split_dir} holds {loose_images} images directly, not in class folders; sort them into "
            f"{split_dir}/<class>/ (for ImageNet val, e.g. with the usual valprep.sh script)"
        )
    return {"classes": classes, "ignored": ignored, "example": example}


def _listing_key(split_dir: Path) -> str:
    """Changes whenever a file or class folder is added, removed or renamed.

    A directory's mtime changes when its entries change, so the split folder and the class folders'
    mtimes cover the listing without reading every file name.
    """
    stamps = [str(split_dir.resolve()), split_dir.stat().st_mtime_ns, CACHE_VERSION]
    stamps += [(e.name, e.stat().st_mtime_ns) for e in sorted(os.scandir(split_dir), key=lambda e: e.name)]
    return hashlib.sha1(json.dumps(stamps).encode()).hexdigest()


class FolderDataset(SkippingImageDataset):
    """(uint8 image (3, H, W), int label) for a list of files; unreadable files are skipped."""

    def __init__(
        self,
        files: list[tuple[str, int]],
        transform: Transform | None,
        bad: BadImages,
    ) -> None:
        super().__init__(len(files), transform, bad)
        # numpy arrays, not a list of str: DataLoader workers forked from this process would touch
        # every Python object's refcount and so copy the whole list once per worker.
        self._paths = np.array([p.encode() for p, _ in files], dtype=bytes)
        self._labels = np.array([label for _, label in files], dtype=np.int64)

    def _name(self, index: int) -> str:
        return self._paths[index].decode()

    def _read(self, index: int) -> tuple[Image.Image, int]:
        return open_image(self._name(index)), int(self._labels[index])


class ImageFolderSource:
    """A Source over class folders; class ids follow the sorted class folder names of the train split.

    The file listing of each split is cached (in `cache_dir`, else root/.vit_exp_cache when writable)
    under a key made of the folders' mtimes, so a restart on a million files does not list them again.

    Args:
        root: Folder holding one subfolder per split.
        strict: Raise on an unreadable image instead of skipping it (see `num_skipped`).
        cache_dir: Where to keep the file listings; None uses root/.vit_exp_cache when writable.
        splits: Our split name ("train", "val", "test") -> subfolder name.
    """

    multi_label = False

    def __init__(
        self,
        root: str | Path,
        strict: bool = False,
        cache_dir: str | Path | None = None,
        splits: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.splits = dict(DEFAULT_SPLITS if splits is None else splits)
        if not self.root.is_dir():
            raise ConfigError(
                f"image folder root {self.root} does not exist; point data.root at the folder "
                f"that holds {'/, '.join(sorted(set(self.splits.values())))}/ with one subfolder per class"
            )
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._bad = BadImages(strict)
        self._listings: dict[str, dict] = {}
        self.class_names = self._find_classes()
        self.num_classes = len(self.class_names)

    @property
    def num_skipped(self) -> int:
        """Unreadable images skipped so far, all splits and DataLoader workers together."""
        return self._bad.num_skipped

    def _split_dir(self, split: str) -> Path:
        if split not in self.splits:
            raise ConfigError(f"unknown split {split!r}; this source maps {sorted(self.splits)}")
        split_dir = self.root / self.splits[split]
        if not split_dir.is_dir():
            raise ConfigError(
                f"split folder {split_dir} for split {split!r} does not exist; create it with one "
                f"subfolder per class, or map {split!r} to an existing folder with splits={{...}}"
            )
        return split_dir

    def _find_classes(self) -> list[str]:
        """Class names: the train split's class folders (else the first split folder that exists)."""
        for split in ("train", "val", "test"):
            if split in self.splits and (self.root / self.splits[split]).is_dir():
                classes = list(self._listing(split)["classes"])
                if split != "train":
                    log.info("no train folder under %s: class names taken from %s", self.root, split)
                if not classes:
                    raise ConfigError(f"{self._split_dir(split)} has no class folders; add root/<split>/<class>/")
                return classes
        raise ConfigError(
            f"none of the split folders {sorted(set(self.splits.values()))} exist under {self.root}; "
            "expected the ImageNet layout root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"
        )

    def _cache_file(self, split_dir: Path) -> Path | None:
        cache_dir = self.cache_dir
        if cache_dir is None:
            if not os.access(self.root, os.W_OK):
                log.info("%s is read-only; set cache_dir to cache the file listing", self.root)
                return None
            cache_dir = self.root / ".vit_exp_cache"
        where = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:12]
        return cache_dir / f"filelist-{where}-{_listing_key(split_dir)[:16]}.json"

    def _listing(self, split: str) -> dict:
        """The split's listing, from memory, the cache file, or a fresh scan (then cached)."""
        if split in self._listings:
            return self._listings[split]
        split_dir = self._split_dir(split)
        cache_file = self._cache_file(split_dir)
        listing = None
        if cache_file is not None and cache_file.is_file():
            try:
                listing = json.loads(cache_file.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("ignoring unreadable listing cache %s", cache_file)
        if listing is None:
            listing = _scan_split(split_dir)
            if cache_file is not None:
                self._write_cache(cache_file, listing)
        if listing["ignored"]:
            warnings.warn(
                f"ignored {listing['ignored']} files outside class folders or without an image extension "
                f"{IMG_EXTENSIONS} under {split_dir}, e.g. {listing['example']}",
                stacklevel=3,
            )
        self._listings[split] = listing
        return listing

    @staticmethod
    def _write_cache(cache_file: Path, listing: dict) -> None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            for stale in cache_file.parent.glob(cache_file.name.rsplit("-", 1)[0] + "-*.json"):
                if stale != cache_file:  # listings of this folder under older keys
                    stale.unlink(missing_ok=True)
            # write then rename: several ranks may list the same folder at once
            tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(listing))
            os.replace(tmp, cache_file)
        except OSError as error:
            log.warning("could not cache the file listing in %s: %s", cache_file.parent, error)

    def samples(self, split: str) -> list[tuple[str, int]]:
        """(path, label) of every image in the split, in class then file name order.

        Raises:
            ConfigError: for a missing split folder, an empty class folder, a class unknown to train,
                or a split without images.
        """
        split_dir = self._split_dir(split)
        class_to_idx = {name: i for i, name in enumerate(self.class_names)}
        files = []
        for name, names in self._listing(split)["classes"].items():
            if name not in class_to_idx:
                raise ConfigError(
                    f"class folder {split_dir / name} is not among the {self.num_classes} train classes; "
                    "remove it or add the class to the train split"
                )
            if not names:
                raise ConfigError(f"class folder {split_dir / name} has no images; add images or remove the folder")
            files += [(str(split_dir / name / file), class_to_idx[name]) for file in names]
        if not files:
            raise ConfigError(f"no images under {split_dir}; expected {split_dir}/<class>/*.JPEG")
        return files

    def dataset(self, split: str, transform: Transform | None = None) -> FolderDataset:
        """Map-style dataset of (uint8 image (3, H, W), int label) for `split`."""
        return FolderDataset(self.samples(split), transform, self._bad)
