"""Sharded training data: today's stream (shuffle buffer) against the resumable order, on generated tar shards.

    python -m vit_exp.data.stream_bench --shards 100 --per-shard 40 --workers 2

Writes ``--shards`` webdataset tar shards of photo-like JPEGs (``loader_bench.make_images``), then measures, for each
order, images per CPU-second of the main process and its loader workers (``loader_bench.measure``'s rule), the
shuffle (how far apart two consecutive samples of one shard land in the epoch, and how many shards a batch draws
from) and what each holds in memory. Then the time to resume the resumable order from the middle of the epoch: a
new loader, the saved position, the first batch (the indices are cached by then, as on any resume).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vit_exp.data.loader_bench import _cpu_seconds, make_images


def write_shards(root: Path, shards: int, per_shard: int) -> str:
    """``shards`` tar shards of ``per_shard`` JPEGs (label: the sample's number); returns their brace pattern."""
    import webdataset as wds

    images = make_images(root / "images", min(per_shard * shards, 200), classes=1)
    files = sorted((images / "train").rglob("*.JPEG"))
    for s in range(shards):
        with wds.TarWriter(str(root / f"train-{s:04d}.tar")) as tar:
            for i in range(s * per_shard, (s + 1) * per_shard):
                tar.write({"__key__": f"{i:08d}", "jpg": files[i % len(files)].read_bytes(), "cls": str(i).encode()})
    return str(root / f"train-{{0000..{shards - 1:04d}}}.tar")


def loader(urls: str, total: int, resumable: bool, workers: int, batch_size: int, size: int, index: Path) -> DataLoader:
    from vit_exp.data.order import resumable_loader
    from vit_exp.data.shards import ShardSource
    from vit_exp.data.transforms import build_train_transform

    source = ShardSource(
        {"train": urls}, num_classes=total, samples_per_epoch={"train": total}, batch_size=batch_size,
        resumable=resumable, index_dir=index,
    )  # fmt: skip
    dataset = source.dataset("train", build_train_transform(size, interpolation="bilinear"))
    kwargs = {"batch_size": batch_size, "num_workers": workers, "drop_last": True}
    return resumable_loader(dataset, **kwargs) if resumable else DataLoader(dataset, **kwargs)


def shuffle_figures(labels: list[int], per_shard: int, batch_size: int) -> tuple[float, float]:
    """(median distance in the epoch between samples i and i + 1 of a shard, mean shards per batch)."""
    where = {label: place for place, label in enumerate(labels)}
    gaps = [abs(where[i + 1] - where[i]) for i in labels if (i + 1) % per_shard and i + 1 in where]
    batches = [labels[b : b + batch_size] for b in range(0, len(labels), batch_size)]
    return float(np.median(gaps)), float(np.mean([len({i // per_shard for i in b}) for b in batches]))


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_exp.data.stream_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--per-shard", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each order")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    total = args.shards * args.per_shard
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        urls = write_shards(root, args.shards, args.per_shard)
        index = root / "index"
        t0 = time.perf_counter()
        loader(urls, total, True, 0, args.batch_size, args.size, index)
        print(f"index of {args.shards} shards built in {time.perf_counter() - t0:.2f} s")
        best: dict[str, float] = {}
        for r in range(args.rounds):
            for name, resumable in (("stream", False), ("resumable", True)):
                torch.manual_seed(r)
                cpu, wall = _cpu_seconds(), time.perf_counter()
                labels = [i for _, t in loader(urls, total, resumable, args.workers, args.batch_size, args.size, index) for i in t.tolist()]
                wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
                best[name] = max(best.get(name, 0.0), len(labels) / cpu)
                gap, shards = shuffle_figures(labels, args.per_shard, args.batch_size)
                print(
                    f"round {r} {name:9s}: {len(labels) / wall:6.1f} img/s wall, {len(labels) / cpu:6.1f} img/s per "
                    f"CPU-s; consecutive samples of a shard {gap:.0f} apart (median), {shards:.1f} shards per batch"
                )
        print(f"best per CPU-s: resumable {best['resumable']:.1f}, stream {best['stream']:.1f} img/s, "
              f"ratio {best['resumable'] / best['stream']:.2f}x")  # fmt: skip
        mean_kb = sum(p.stat().st_size for p in root.glob("*.tar")) / total / 1024
        print(f"memory per worker: stream holds its shuffle buffer, 2048 encoded samples (~{2048 * mean_kb / 1024:.0f} MB "
              f"here); resumable holds the epoch's order, 24 bytes a sample ({total * 24 / 2**20:.2f} MB here), and "
              f"the tar index, ~{_index_bytes(index) / args.shards / 1024:.1f} KB a shard")  # fmt: skip
        state = {"epoch": 0, "batches": total // args.batch_size // 2,
                 "segments": [[1, args.batch_size, total - total % args.batch_size, total // args.batch_size // 2]]}  # fmt: skip
        t0 = time.perf_counter()
        resumed = loader(urls, total, True, 0, args.batch_size, args.size, index)
        resumed.load_state_dict(state)
        next(iter(resumed))
        print(f"resume at batch {state['batches']} of {total // args.batch_size} ({args.shards} shards): first batch in "
              f"{time.perf_counter() - t0:.2f} s; max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")  # fmt: skip


def _index_bytes(index: Path) -> int:
    return sum(p.stat().st_size for p in index.glob("*.npz"))


if __name__ == "__main__":
    main()
