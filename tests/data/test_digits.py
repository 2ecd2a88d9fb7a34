"""The embedded digits: a fixed, stratified, disjoint split of all 1,797 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_exp.data.digits import DigitsSource
from vit_exp.data.transforms import build_eval_transform


def _labels(source: DigitsSource, split: str) -> np.ndarray:
    ds = source.dataset(split, build_eval_transform(16, 1.0, "bicubic"))
    return np.array([ds.labels[i] for i in range(len(ds))])


def test_split_sizes_are_fixed_and_cover_everything() -> None:
    source = DigitsSource()
    _, _, splits = source._data
    assert {k: len(v) for k, v in splits.items()} == {"train": 1258, "val": 180, "test": 359}
    everything = np.concatenate(list(splits.values()))
    assert len(np.unique(everything)) == 1797


def test_split_depends_on_the_seed_only() -> None:
    a, b, c = DigitsSource(seed=0)._data[2], DigitsSource(seed=0)._data[2], DigitsSource(seed=1)._data[2]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_splits_are_stratified() -> None:
    counts = np.bincount(_labels(DigitsSource(), "test"), minlength=10)
    assert counts.min() >= 33 and counts.max() <= 38  # ~10% of 359 per digit


def test_items_are_uint8_images_of_the_model_size() -> None:
    ds = DigitsSource().dataset("val", build_eval_transform(32, 1.0, "bicubic"))
    image, label = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert 0 <= label < 10 and image.max() > 200  # ink reaches near-white after 0..16 -> 0..255


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fractions|sum"):
        DigitsSource(val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ValueError, match="unknown split"):
        DigitsSource().dataset("validation", build_eval_transform(16, 1.0, "bicubic"))
