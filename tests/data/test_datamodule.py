"""ViTDataModule: uint8 across the loader, normalised after the transfer, sizes checked."""

from __future__ import annotations

import pytest
import torch

from vit_exp.data.datamodule import ViTDataModule
from vit_exp.data.digits import DigitsSource


def _datamodule(**kwargs) -> ViTDataModule:
    args = {"batch_size": 16, "num_workers": 0, "img_size": 16, "crop_pct": 1.0, "interpolation": "bicubic"}
    return ViTDataModule(DigitsSource(), **{**args, **kwargs})


def test_batches_are_uint8_until_after_the_transfer() -> None:
    dm = _datamodule(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 16, 16) and y.shape == (16,)
    xn, yn = dm.on_after_batch_transfer((x, y), 0)
    assert xn.dtype == torch.float32 and torch.equal(yn, y)
    assert torch.allclose(xn, (x.float() / 255 - 0.5) / 0.25)


def test_loaders_and_splits() -> None:
    dm = _datamodule(eval_batch_size=100)
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    assert len(dm.train_dataloader()) == 1258 // 16  # drop_last: every step has a full batch
    assert len(dm.val_dataloader()) == 2
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 359
    assert dm.num_classes == 10 and dm.multi_label is False and dm.name == "DigitsSource"


def test_test_split_can_point_at_val() -> None:
    dm = _datamodule(test_split="val")
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 180


def test_train_augmentation_is_optional() -> None:
    plain = _datamodule()
    assert plain.train_transform is plain.eval_transform
    aug = _datamodule(train_aug={"scale": (0.5, 1.0), "hflip": 0.0})
    assert aug.train_transform is not aug.eval_transform


def test_num_classes_disagreement_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="data.num_classes=10"):
        _datamodule(num_classes=100)
    with pytest.raises(ValueError, match="test_split"):
        _datamodule(test_split="holdout")
