"""Training-loader throughput per CPU core: ours (uint8, draft decode) against plain torchvision.

    python -m vit_exp.data.loader_bench --n 400 --workers 2 --size 224

Writes an ImageNet-like set of JPEGs (500x375, photo-like statistics) to a temporary folder, then
reads it with both training pipelines through a DataLoader, alternating them for `--rounds` rounds:

  ours:     ImageFolderSource + build_train_transform -> uint8 batches (normalised later, on the device)
  bytes:    ours under data.decode=device: the workers read JPEG bytes and draw the crop and flip only
  baseline: torchvision ImageFolder + RandomResizedCrop + flip + ToTensor + Normalize -> float batches

and then times the device half of ``bytes`` (``DeviceDecode``: batched decode, crop, resize, flip) where it runs:
on this machine's CPU (``--device cpu``, the reference figure) or on a GPU (``device_step``, ``--device cuda``).

"Per core" is images per CPU-second of the main process and its workers together, which is what
limits a data loader and is steadier than wall time on a shared machine. Both use one interpolation.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_images(root: Path, n: int, width: int = 500, height: int = 375, classes: int = 10, seed: int = 0) -> Path:
    """Write n photo-like JPEGs as root/train/<class>/<i>.JPEG; return root.

    Smooth random shapes plus mild sensor noise give file sizes and decode costs close to ImageNet's
    (about 100 KB at quality 90), unlike flat colours (too cheap) or white noise (too costly).
    """
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
        y, x = np.mgrid[0:height, 0:width]
        for _ in range(30):  # objects: sharp edges at many scales
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, 100)
            img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.uniform(-50, 50, size=3)
        texture = rng.normal(0, 1, size=(height // 3 + 1, width // 3 + 1)).astype(np.float32)
        img += 25 * np.asarray(Image.fromarray(texture).resize((width, height), Image.Resampling.BICUBIC))[..., None]
        img += rng.normal(0, 4, size=img.shape)  # sensor noise
        path = root / "train" / f"c{i % classes:02d}" / f"{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return root


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(
    dataset: Dataset, workers: int, batch_size: int, epochs: int, collate_fn: Any = None
) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of `epochs` shuffled passes over the dataset in one loader.

    One long pass rather than several short ones, so that starting the workers weighs as little
    as it does in real training.
    """
    sampler = RandomSampler(dataset, num_samples=epochs * len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, sampler=sampler, collate_fn=collate_fn)
    cpu, wall, images = _cpu_seconds(), time.perf_counter(), 0
    for batch, _ in loader:
        images += len(batch)
    # the workers have exited once the pass is over, so their time is in RUSAGE_CHILDREN now
    return images, time.perf_counter() - wall, _cpu_seconds() - cpu


def pipelines(root: Path, size: int, interpolation: str) -> dict[str, Dataset]:
    from torchvision import datasets
    from torchvision import transforms as T

    from vit_exp.data.device_decode import ReadEncoded
    from vit_exp.data.folder import ImageFolderSource
    from vit_exp.data.transforms import INTERPOLATIONS, build_train_transform

    baseline = T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=INTERPOLATIONS[interpolation]),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ours = build_train_transform(size, interpolation=interpolation)
    source = ImageFolderSource(root, cache_dir=root / ".cache")
    return {
        "ours": source.dataset("train", ours),
        "bytes": source.dataset("train", ReadEncoded(ours)),  # type: ignore[arg-type]
        "baseline": datasets.ImageFolder(str(root / "train"), transform=baseline),
    }


def run(
    root: Path, workers: int, size: int, batch_size: int, epochs: int, rounds: int, interpolation: str
) -> dict[str, float]:
    """Best images per CPU-second of each pipeline over the rounds; prints one line per measurement."""
    datasets = pipelines(root, size, interpolation)
    best: dict[str, float] = {}
    from vit_exp.data.device_decode import collate_encoded

    for r in range(rounds):
        for name, dataset in datasets.items():
            collate = collate_encoded if name == "bytes" else None
            images, wall, cpu = measure(dataset, workers, batch_size, epochs, collate)
            best[name] = max(best.get(name, 0.0), images / cpu)
            print(
                f"round {r} {name:8s}: {images / wall:7.1f} img/s wall, {images / cpu:7.1f} img/s per core "
                f"({cpu:.2f} CPU-s for {images} images)"
            )
    return best


def device_step(
    root: Path | None = None,
    device: str = "cuda",
    batch_size: int = 256,
    size: int = 224,
    batches: int = 20,
    interpolation: str = "bilinear",
    n: int = 256,
) -> dict[str, float]:
    """The device half of ``data.decode=device`` alone: decode + random-resized crop + flip of training batches.

    Loads the bytes once (``ReadEncoded`` in this process), then times ``DeviceDecode`` on ``batches`` batches after
    one warm-up batch, synchronising the device around the timed loop only. The entry for a GPU check:
    ``device_step(device="cuda")`` writes its own ``n`` ImageNet-sized JPEGs when ``root`` is None.

    Returns:
        {"device", "batch_size", "images_per_s", "ms_per_image"} (wall time; on a CPU also its CPU time).
    """
    from vit_exp.data.device_decode import DeviceDecode, ReadEncoded, collate_encoded
    from vit_exp.data.folder import ImageFolderSource
    from vit_exp.data.transforms import build_train_transform

    with tempfile.TemporaryDirectory() as tmp:
        root = root or make_images(Path(tmp), n)
        dataset = ImageFolderSource(root, cache_dir=Path(tmp) / ".cache").dataset(
            "train",
            ReadEncoded(build_train_transform(size, interpolation)),  # type: ignore[arg-type]
        )
        samples = [dataset[i % len(dataset)] for i in range(batch_size)]
    batch = collate_encoded(samples)[0].to(device)
    step = DeviceDecode(size, 0.875, interpolation)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    step(batch)  # warm-up: nvJPEG handles, kernels
    sync()
    cpu, wall = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        out = step(batch)
    sync()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    images = batches * batch_size
    assert out.shape == (batch_size, 3, size, size)
    result = {
        "device": device,
        "batch_size": batch_size,
        "images_per_s": images / wall,
        "ms_per_image": 1e3 * wall / images,
    }
    if torch.device(device).type == "cpu":
        result["cpu_ms_per_image"] = 1e3 * cpu / images
    return result


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vit_exp.data.loader_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="number of generated images")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--size", type=int, default=224, help="training image size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the images per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each pipeline")
    parser.add_argument("--interpolation", default="bilinear", help="for both pipelines (torchvision's default)")
    parser.add_argument("--root", type=Path, help="use these images (root/train/<class>/) instead of generating")
    parser.add_argument("--device", default="cpu", help="where to time the device half of decode=device")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the main process only collects batches; keep it off the workers' cores
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or make_images(Path(tmp), args.n)
        best = run(root, args.workers, args.size, args.batch_size, args.epochs, args.rounds, args.interpolation)
        step = device_step(root, args.device, args.batch_size, args.size, 5, args.interpolation)
    print(
        f"best per core: ours {best['ours']:.1f} img/s, bytes (decode=device) {best['bytes']:.1f} img/s, "
        f"baseline {best['baseline']:.1f} img/s; ours/baseline {best['ours'] / best['baseline']:.2f}x, "
        f"bytes/ours {best['bytes'] / best['ours']:.1f}x"
    )
    extra = f", {step['cpu_ms_per_image']:.2f} CPU-ms" if "cpu_ms_per_image" in step else ""
    print(
        f"device half of decode=device on {step['device']} (batch {step['batch_size']}): "
        f"{step['images_per_s']:.1f} img/s, {step['ms_per_image']:.2f} ms per image{extra}"
    )


if __name__ == "__main__":
    main()
