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


def test_deterministic_transform_runs_once_per_image_with_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation transform (the default run trains with it) is applied once per image and reused; a random
    (training) transform is applied at every access."""
    from vit_exp.data.transforms import EvalTransform, build_train_transform

    calls = []
    real = EvalTransform.__call__
    monkeypatch.setattr(EvalTransform, "__call__", lambda self, img: calls.append(1) or real(self, img))
    transform = build_eval_transform(16, 1.0, "bicubic")
    ds = DigitsSource().dataset("train", transform)
    first = [ds[i][0] for i in range(5)]
    again = [ds[i][0] for i in range(5)]
    assert len(calls) == 5  # not 10
    for i, (a, b) in enumerate(zip(first, again)):
        assert torch.equal(a, b) and torch.equal(a, real(transform, ds.images[i]))
    augmented = DigitsSource().dataset("train", build_train_transform(16, "bicubic"))
    torch.manual_seed(0)
    assert not all(torch.equal(augmented[0][0], augmented[0][0]) for _ in range(5))
