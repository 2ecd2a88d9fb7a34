"""Write an image folder or a Hugging Face dataset as tar (webdataset) or parquet shards.

    python -m vit_exp.data.convert --src /data/imagenet --out /data/imagenet-wds --format wds --shard-size 1000

Samples are shuffled before sharding (a class-sorted shard would defeat the loader's shuffle buffer),
every image is decoded once to drop unreadable files, and encoded JPEG/PNG/WebP bytes are copied as
they are (other formats are re-encoded as PNG). An index.json next to the shards records the counts
and class names; `ShardSource.from_index` reads it.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from vit_exp.data._bad_images import BAD_IMAGE_ERRORS
from vit_exp.data.transforms import open_image

log = logging.getLogger(__name__)

FORMATS = ("wds", "parquet")
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
Label = int | list[int]


def encode_image(data: bytes | str) -> tuple[bytes, str]:
    """Check that an image decodes; return its bytes and extension (re-encoded as PNG if unusual).

    Args:
        data: Encoded image bytes, or a file path.

    Raises:
        OSError, SyntaxError: when the image cannot be decoded.
    """
    if isinstance(data, str):
        data = Path(data).read_bytes()
    img = open_image(data)
    img.load()
    if img.format in _KEPT_FORMATS:
        return data, _KEPT_FORMATS[img.format]
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue(), "png"


def _checked(data: bytes | str) -> tuple[bytes | None, str | None, str | None]:
    """Pool worker: (bytes, extension, None), or (None, None, error) for an unreadable image."""
    try:
        return (*encode_image(data), None)
    except BAD_IMAGE_ERRORS as error:
        return None, None, str(error)


class _ShardWriter:
    """Writes numbered shards of `shard_size` samples: {prefix}-000000.tar or .parquet."""

    def __init__(self, out: Path, prefix: str, fmt: str, shard_size: int) -> None:
        self.out, self.prefix, self.fmt, self.shard_size = out, prefix, fmt, shard_size
        self.names: list[str] = []
        self.rows: list[tuple[str, bytes, str, Label]] = []

    def add(self, key: str, image: bytes, ext: str, label: Label) -> None:
        self.rows.append((key, image, ext, label))
        if len(self.rows) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"{self.prefix}-{len(self.names):06d}.{'tar' if self.fmt == 'wds' else 'parquet'}"
        (self._write_tar if self.fmt == "wds" else self._write_parquet)(self.out / name)
        self.names.append(name)
        self.rows = []

    def _write_tar(self, path: Path) -> None:
        import webdataset as wds

        with wds.TarWriter(str(path)) as tar:
            for key, image, ext, label in self.rows:
                if isinstance(label, list):
                    tar.write({"__key__": key, ext: image, "json": json.dumps({"labels": label}).encode()})
                else:
                    tar.write({"__key__": key, ext: image, "cls": str(label).encode()})

    def _write_parquet(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        labels = [label for *_, label in self.rows]
        column = "labels" if isinstance(labels[0], list) else "label"
        table = pa.table(
            {
                "key": [key for key, *_ in self.rows],
                "image": pa.array([image for _, image, *_ in self.rows], pa.binary()),
                column: labels,
            }
        )
        pq.write_table(table, path)


def _open_source(src: str, image_column: str, label_column: str) -> Any:
    """An ImageFolderSource for a class-folder tree, else an HFSource."""
    from vit_exp.data.hf import HFSource, is_saved_to_disk

    path = Path(src).expanduser()
    if path.is_dir() and not is_saved_to_disk(path):
        from vit_exp.data.folder import ImageFolderSource

        return ImageFolderSource(path)
    return HFSource(src, image_column=image_column, label_column=label_column)


def _split_items(source: Any, split: str, seed: int) -> tuple[int, Iterator[tuple[bytes | str, Label, str]]]:
    """Number of samples and a shuffled stream of (bytes or path, label, name) for messages."""
    if hasattr(source, "samples"):  # image folder: the listing is small, the images are read later
        files = source.samples(split)
        random.Random(seed).shuffle(files)
        return len(files), ((path, label, path) for path, label in files)
    ds = source.load_split(split).shuffle(seed=seed)  # an index permutation; rows are read lazily
    image, label = source.image_column, source.label_column
    rows = (
        (row[image]["bytes"] or row[image]["path"], row[label], f"{source.name_or_path} {split}[{i}]")
        for i, row in enumerate(ds)
    )
    return len(ds), rows


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def convert(
    src: str,
    out: str | Path,
    fmt: str = "wds",
    shard_size: int = 1000,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
    strict: bool = False,
    workers: int = 1,
    image_column: str = "image",
    label_column: str = "label",
) -> dict:
    """Write the splits of `src` as shards in `out` plus out/index.json; return the index.

    Args:
        src: An image folder root (root/<split>/<class>/...) or a Hugging Face dataset name or path.
        out: Output folder (created).
        fmt: "wds" (tar shards) or "parquet".
        shard_size: Samples per shard.
        splits: Our split names to convert ("train", "val", "test").
        seed: Seed of the sample shuffle.
        strict: Raise on an unreadable image instead of skipping it.
        workers: Processes that read and decode the images to check them.
        image_column: Image column of a Hugging Face dataset.
        label_column: Label column of a Hugging Face dataset.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = _open_source(src, image_column, label_column)
    index: dict[str, Any] = {"format": fmt, "multi_label": False, "splits": {}}
    with Pool(workers) if workers > 1 else _InProcess() as pool:
        for split in splits:
            total, items = _split_items(source, split, seed)
            writer = _ShardWriter(out, split, fmt, shard_size)
            written = 0
            # bounded chunks: Pool.imap would pull every image of the split into memory at once
            for chunk in _chunks(items, 64 * max(workers, 1)):
                checked = pool.map(_checked, [data for data, _, _ in chunk])
                for (_, label, name), (image, ext, error) in zip(chunk, checked, strict=True):
                    if image is None:
                        if strict:
                            raise ValueError(f"cannot read image {name}: {error}; remove or replace it")
                        warnings.warn(f"skipping unreadable image {name}: {error}", stacklevel=2)
                        continue
                    index["multi_label"] |= isinstance(label, list)
                    writer.add(f"{split}_{written:09d}", image, ext, label)
                    written += 1
            writer.flush()
            if not writer.names:
                raise ValueError(f"split {split!r} of {src} has no readable image; nothing to write")
            index["splits"][split] = {
                "num_samples": written,
                "num_skipped": total - written,
                "shards": writer.names,
                "urls": f"{split}-{{000000..{len(writer.names) - 1:06d}}}.{writer.names[0].rsplit('.', 1)[1]}",
            }
            log.info(
                "%s: wrote %d samples in %d shards (%d skipped)", split, written, len(writer.names), total - written
            )
    try:
        index["num_classes"], index["class_names"] = source.num_classes, source.class_names
    except ValueError:  # a Hugging Face label column without ClassLabel: the count is not recorded
        index["num_classes"], index["class_names"] = None, None
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


class _InProcess:
    """Stands in for a Pool when workers=1: the same map, no extra process."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def map(fn: Any, items: Iterable) -> list:
        return [fn(item) for item in items]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_exp.data.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="image folder root, or Hugging Face dataset name/path")
    parser.add_argument("--out", required=True, help="output folder for the shards and index.json")
    parser.add_argument("--format", choices=FORMATS, default="wds")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--split", action="append", help="split to convert (repeatable); default train and val")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="stop at an unreadable image instead of skipping it")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding images to check them")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    index = convert(
        args.src,
        args.out,
        args.format,
        args.shard_size,
        args.split or ("train", "val"),
        args.seed,
        args.strict,
        args.workers,
        args.image_column,
        args.label_column,
    )
    for split, info in index["splits"].items():
        print(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shards ({info['urls']})")
    print(f"index: {Path(args.out) / 'index.json'}")


if __name__ == "__main__":
    main()
