"""ImageNet-1k in whichever form a user has it: ``data=imagenet data.root=PATH`` and nothing else.

The layout is recognised from what is at ``root``:

- ILSVRC-2012 folders, ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (file list cached after the first scan);
- a Hugging Face ``imagenet-1k`` copy on disk (``save_to_disk`` output, or the hub repo's parquet files);
- webdataset tar shards named as timm's ``imagenet-1k-wds`` (``imagenet1k-train-0000.tar``, ...
  ``imagenet1k-validation-00.tar``; ``.jpg`` + ``.cls`` per sample);
- a hub name (``imagenet-1k``, ``ILSVRC/imagenet-1k``, ``timm/imagenet-1k-wds``) when no such path exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit_exp.data.folder import ImageFolderSource
from vit_exp.data.hf import HFSource, is_saved_to_disk
from vit_exp.data.shards import ShardSource
from vit_exp.errors import ConfigError

NUM_CLASSES = 1000
TRAIN_IMAGES = 1_281_167
VAL_IMAGES = 50_000
HF_SPLITS = {"train": "train", "val": "validation", "test": "validation"}  # test labels are not public
FOLDER_SPLITS = {"train": "train", "val": "val", "test": "val"}
HUB_NAMES = ("imagenet-1k", "ILSVRC/imagenet-1k", "timm/imagenet-1k-wds")


def _wds_shards(root: Path) -> dict[str, list[str]]:
    train = sorted(str(p) for p in root.glob("imagenet1k-train-*.tar"))
    val = sorted(str(p) for p in root.glob("imagenet1k-validation-*.tar"))
    return {"train": train, "val": val, "test": val} if train and val else {}


def imagenet_source(
    root: str | Path,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    shuffle_buffer: int = 10_000,
) -> Any:
    """The Source for ImageNet-1k at ``root`` (see the module docstring for the layouts recognised).

    Args:
        root: A folder in one of the layouts, or a hub name.
        strict: Stop at the first unreadable image instead of skipping and counting it.
        cache_dir: Where the folder layout's file listing is cached (None: under root when writable).
        batch_size: Per-device batch size, so that shard streams yield whole batches.
        shuffle_buffer: Samples per worker in the shard stream's shuffle buffer.

    Raises:
        ConfigError: ``root`` does not exist or holds none of the layouts; the message lists them.
    """
    path = Path(root).expanduser()
    if path.is_dir():
        train = path / "train"
        if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
            return ImageFolderSource(path, strict=strict, cache_dir=cache_dir, splits=FOLDER_SPLITS)
        if is_saved_to_disk(path) or any(path.glob("data/*.parquet")):
            return HFSource(str(path), splits=HF_SPLITS, num_classes=NUM_CLASSES, strict=strict)
        if urls := _wds_shards(path):
            return ShardSource(
                urls,
                num_classes=NUM_CLASSES,
                samples_per_epoch={"train": TRAIN_IMAGES},
                shuffle_buffer=shuffle_buffer,
                image_key="jpg;jpeg;png",
                label_key="cls",
                batch_size=batch_size,
                strict=strict,
            )
        raise ConfigError(
            f"data.root={path} holds no ImageNet layout that vit_exp knows. Expected one of: train/<wnid>/*.JPEG "
            f"and val/<wnid>/*.JPEG folders; a Hugging Face imagenet-1k copy (save_to_disk, or data/*.parquet); "
            f"imagenet1k-train-*.tar + imagenet1k-validation-*.tar shards (timm's imagenet-1k-wds)"
        )
    if str(root) in HUB_NAMES:
        columns = dict(image_column="jpg", label_column="cls") if "wds" in str(root) else {}
        return HFSource(str(root), splits=HF_SPLITS, num_classes=NUM_CLASSES, strict=strict, **columns)
    raise ConfigError(
        f"data.root={root} does not exist; point it at your ImageNet copy (python train.py data=imagenet "
        f"data.root=/path/to/imagenet), or name a hub dataset: {', '.join(HUB_NAMES)}"
    )
