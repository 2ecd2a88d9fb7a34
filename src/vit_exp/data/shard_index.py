"""Random access into tar and parquet shards: an index of where each sample lies, built once per shard.

A tar shard's index is a scan of its headers (``tarfile`` reads each 512-byte header and seeks over the data, so a
1 GB shard costs milliseconds, not a read): for each sample (webdataset's rule: the members sharing a name up to
the first dot of the file name) the offset and size of each member. It is cached as an ``.npz`` (no pickle) under
``index_dir``, keyed by the shard's path, size and modification time. A parquet shard needs no scan: its footer
gives the rows of each row group.

Why not webdataset's ``wids``, which indexes tars the same way: it is a separate package (``wids``, not part of
``webdataset`` 1.0), writes pickled indices beside the shards (a read-only data directory fails; a pickle from a
shared directory is unsafe to load), and its samplers keep no resumable position. The part we would reuse is this
scan, some 40 lines.

A truncated tar keeps the samples before the cut: the members past the end of the file (or after an unreadable
header) are dropped and reported once, as one skipped sample (``BadImages``: strict stops, naming shard and key).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vit_exp.data._bad_images import BadImages

# webdataset's key rule (webdataset.tariterators.base_plus_ext): the key runs up to the first dot of the file name
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_VERSION = 1  # of the cached index files; bump when their layout changes


def _read_errors() -> tuple[type[Exception], ...]:
    try:
        from pyarrow import ArrowException
    except ImportError:
        return (OSError, tarfile.TarError)
    return (OSError, tarfile.TarError, ArrowException)


# What reading a sample's bytes raises for a damaged shard (a corrupt parquet page, a cut file)
READ_ERRORS = _read_errors()


def local_path(url: str) -> str | None:
    """The local file a shard URL names (a plain path or ``file://``), or None (http, s3, ``pipe:``)."""
    if url.startswith("file://"):
        return url[len("file://") :]
    return None if "://" in url or url.startswith("pipe:") else url


@dataclass
class ShardIndex:
    """Where each sample of one shard lies.

    Attributes:
        url: The shard.
        keys: Sample keys, in stored order.
        starts: ``members[starts[i]:starts[i + 1]]`` are sample i's members (tar); None for parquet.
        offsets: Byte offset of each member's data (tar); for parquet, the first row of each row group.
        sizes: Byte size of each member (tar); for parquet, the rows of each row group.
        exts: Each member's extension, e.g. "jpg", "cls" (tar); None for parquet.
        damage: What was cut off a truncated tar ("" when whole).
    """

    url: str
    keys: np.ndarray
    starts: np.ndarray | None
    offsets: np.ndarray
    sizes: np.ndarray
    exts: np.ndarray | None
    damage: str = ""

    def __len__(self) -> int:
        return len(self.keys)


def _scan_tar(path: str) -> ShardIndex:
    keys: list[str] = []
    starts: list[int] = []
    offsets: list[int] = []
    sizes: list[int] = []
    exts: list[str] = []
    damage = ""
    end = os.path.getsize(path)
    with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only; a .tar.gz has no random access
        try:
            for member in tar:
                if not member.isfile() or not (match := _KEY_EXT.match(member.name)):
                    continue
                if member.offset_data + member.size > end:
                    damage = f"member {member.name} ends past the end of the file ({end} bytes): truncated"
                    break
                key, ext = match.groups()
                if not keys or keys[-1] != key:
                    keys.append(key)
                    starts.append(len(offsets))
                offsets.append(member.offset_data)
                sizes.append(member.size)
                exts.append(ext)
        except tarfile.TarError as error:  # a corrupt header mid-shard: what comes after it cannot be found
            damage = f"unreadable tar header after {len(offsets)} members: {error}"
    if damage and keys:  # the last sample may have lost members to the cut: drop it whole
        del offsets[starts[-1] :], sizes[starts[-1] :], exts[starts[-1] :]
        damage = f"sample {keys.pop()}: {damage}"
        starts.pop()
    starts.append(len(offsets))
    return ShardIndex(
        path, np.array(keys, dtype=str), np.array(starts, np.int64), np.array(offsets, np.int64),
        np.array(sizes, np.int64), np.array(exts, dtype=str), damage,
    )  # fmt: skip


def _cache_file(index_dir: Path, path: str) -> Path:
    stat = os.stat(path)
    ident = f"{_VERSION}|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    return index_dir / f"{hashlib.sha1(ident.encode()).hexdigest()}.npz"


def tar_index(path: str, index_dir: Path | None) -> ShardIndex:
    """The index of a local tar shard, read from ``index_dir`` or scanned (and then written there)."""
    cache = _cache_file(index_dir, path) if index_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            names = ("keys", "starts", "offsets", "sizes", "exts")
            return ShardIndex(path, *(z[name] for name in names), damage=str(z["damage"]))
    index = _scan_tar(path)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # written whole, then renamed: ranks that index the same shard at once never read half a file
        fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f, keys=index.keys, starts=index.starts, offsets=index.offsets, sizes=index.sizes,
                exts=index.exts, damage=np.array(index.damage),
            )  # fmt: skip
        os.replace(tmp, cache)
    return index


def parquet_index(url: str) -> ShardIndex:
    """Rows per row group of a parquet shard, from its footer (no data read); keys from a "key" column if any."""
    file = _open_parquet(url)
    meta = file.metadata
    rows = np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)], np.int64)
    total = int(rows.sum())
    if "key" in file.schema_arrow.names:
        keys = np.array([str(k) for k in file.read(columns=["key"]).column("key").to_pylist()], dtype=str)
    else:
        keys = np.arange(total).astype(str)
    return ShardIndex(url, keys, None, np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64), rows, None)


def _open_parquet(url: str) -> Any:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if "://" in url:
        fs, path = pafs.FileSystem.from_uri(url)  # s3://, gs://, hdfs://, file://: random access, unlike a tar stream
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(url).resolve())
    return pq.ParquetFile(fs.open_input_file(path))


def build_indices(urls: Sequence[str], index_dir: Path | None, bad: BadImages, threads: int = 16) -> list[ShardIndex]:
    """The index of every shard (in threads: it is file I/O); reports truncated tars through ``bad``.

    Raises:
        ValueError: a tar URL that is no local file (a stream cannot seek).
    """
    for url in urls:
        if not url.endswith(".parquet") and local_path(url) is None:
            raise ValueError(
                f"shard {url} is not a local file: resumable reading seeks into tar shards; copy them to local "
                "disk (or use parquet on object storage), or set resumable=false to stream them (no exact resume)"
            )

    def one(url: str) -> ShardIndex:
        return parquet_index(url) if url.endswith(".parquet") else tar_index(local_path(url), index_dir)  # type: ignore[arg-type]

    with ThreadPoolExecutor(min(threads, max(1, len(urls)))) as pool:
        indices = list(pool.map(one, urls))
    for index in indices:
        if index.damage:
            bad.skip(f"the end of shard {index.url} ({index.damage})", OSError("truncated shard"))
    return indices


class ShardReader:
    """Reads samples by (shard, member) through the indices; keeps a few files (tar) or row groups (parquet) open.

    One per DataLoader worker (open files do not cross processes): it opens what it needs lazily.
    """

    def __init__(self, indices: Sequence[ShardIndex], columns: Sequence[str], cache: int = 8) -> None:
        self.indices, self.columns, self.cache = indices, list(columns), cache
        self._open: OrderedDict[Any, Any] = OrderedDict()  # LRU: tar files and parquet row groups

    def _cached(self, key: Any, make: Any) -> Any:
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        value = self._open[key] = make()
        if len(self._open) > self.cache:
            _, old = self._open.popitem(last=False)
            if hasattr(old, "close"):
                old.close()
        return value

    def sample(self, shard: int, member: int) -> dict[str, Any]:
        """The sample as webdataset gives it: {ext: bytes, ..., "__key__", "__url__"} (parquet: {column: value})."""
        index = self.indices[shard]
        out: dict[str, Any] = {"__key__": str(index.keys[member]), "__url__": index.url}
        if index.starts is None:  # parquet: the row group holding the row
            group = int(np.searchsorted(index.offsets, member, side="right")) - 1
            table = self._cached(("rg", shard, group), lambda: self._row_group(index.url, group))
            row = member - int(index.offsets[group])
            return {**{name: column[row] for name, column in table.items()}, **out}
        file = self._cached(("tar", shard), lambda: open(local_path(index.url), "rb"))  # type: ignore[arg-type]
        for m in range(index.starts[member], index.starts[member + 1]):
            file.seek(index.offsets[m])
            out[str(index.exts[m])] = file.read(index.sizes[m])
        return out

    def _row_group(self, url: str, group: int) -> dict[str, list]:
        file = _open_parquet(url)
        columns = [c for c in self.columns if c in file.schema_arrow.names]
        return file.read_row_group(group, columns=columns).to_pydict()

    def close(self) -> None:
        for value in self._open.values():
            if hasattr(value, "close"):
                value.close()
        self._open.clear()
