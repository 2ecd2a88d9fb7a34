"""Tiny generated images and folders for the data tests; nothing is downloaded."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# datasets must never reach the hub from a test, even by accident
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise: compresses and resizes like a photo, unlike flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    channels = [127 + 100 * np.sin(x / (7 + 5 * c) + y / (11 + 3 * c) + phase[c]) for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def make_image() -> Callable[..., Image.Image]:
    """make_image(width=32, height=24, seed=0) -> an RGB PIL image."""

    def make(width: int = 32, height: int = 24, seed: int = 0) -> Image.Image:
        return _image(width, height, seed)

    return make


@pytest.fixture
def encode_jpeg() -> Callable[[Image.Image], bytes]:
    """encode_jpeg(img) -> the image as JPEG bytes."""

    def encode(img: Image.Image) -> bytes:
        out = io.BytesIO()
        img.save(out, "JPEG", quality=90)
        return out.getvalue()

    return encode


@pytest.fixture
def write_jpeg() -> Callable[..., Path]:
    """write_jpeg(path, width=32, height=24, seed=0) -> path of a new JPEG file."""

    def write(path: Path, width: int = 32, height: int = 24, seed: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(width, height, seed).save(path, "JPEG", quality=90)
        return path

    return write


@pytest.fixture
def image_folder(tmp_path: Path, write_jpeg: Callable[..., Path]) -> Path:
    """ImageNet layout: train/<wnid>/ with 4 images each and val/<wnid>/ with 2, for 3 classes."""
    root = tmp_path / "imagenet"
    seed = 0
    for split, per_class in (("train", 4), ("val", 2)):
        for wnid in ("n02", "n01", "n03"):  # not in sorted order on purpose
            for i in range(per_class):
                seed += 1
                write_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", seed=seed)
    return root


@pytest.fixture
def data_module() -> Callable[..., object]:
    """data_module(name, *overrides) -> the ViTDataModule that conf/data/<name>.yaml instantiates.

    Composes the real train config (default model: 16x16 input) with fixed preprocessing, which
    vit_exp.build would otherwise take from the model, and no loader workers.
    """
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[2] / "conf"

    def build(name: str, *overrides: str) -> object:
        fixed = [
            "data.crop_pct=1.0",
            "data.interpolation=bicubic",
            "data.mean=[0.5,0.5,0.5]",
            "data.std=[0.5,0.5,0.5]",
            "data.num_workers=0",
        ]
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose("train", overrides=[f"data={name}", *fixed, *overrides])
        return instantiate(cfg.data)

    return build
