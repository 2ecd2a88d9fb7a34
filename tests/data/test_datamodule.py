"""ViTDataModule: uint8 across the loader, normalised (and, in training, randomly erased) after the transfer."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins import HalfPrecision, Precision

from tests.conftest import CONF_DIR, compose
from vit_exp.data.datamodule import ViTDataModule
from vit_exp.data.digits import DigitsSource
from vit_exp.data.mixup import MixupCutmix
from vit_exp.data.transforms import normalize


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


ERASE_ALL = {"random_erasing": {"prob": 1.0, "mode": "const"}}


def _erased(x: torch.Tensor) -> torch.Tensor:
    """Per image: whether some pixel is exactly 0 in every channel (digits normalised by 0.5, 0.5 never are)."""
    return (x == 0).all(1).flatten(1).any(1)


def test_images_take_the_precision_of_a_true_half_run() -> None:
    """Lightning converts a batch to bf16-true while it is uint8; the normalised images get the dtype here."""
    dm = _datamodule(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(training=True, precision_plugin=HalfPrecision("bf16-true"))
    xn, yn = dm.on_after_batch_transfer((x, y), 0)
    assert xn.dtype == torch.bfloat16 and torch.equal(yn, y)


def test_loader_workers_are_capped_to_the_usable_cpus(monkeypatch, caplog) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level(logging.INFO, logger="vit_exp.data.datamodule"):
        dm = _datamodule(num_workers=8)
    dm.setup("fit")
    assert dm.num_workers == 2 and dm.train_dataloader().num_workers == 2
    assert "data.num_workers=8 capped to 2: the CPUs this process may use" in caplog.text
    caplog.clear()
    assert _datamodule(num_workers=2).num_workers == 2 and "capped" not in caplog.text


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_batches_are_pinned_only_for_a_run_on_a_gpu(device: str, monkeypatch) -> None:
    """On a GPU machine a ``hw=cpu`` run would pin every batch for nothing; the run's device decides."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine
    dm = _datamodule()
    dm.setup("fit")
    assert dm.train_dataloader().pin_memory  # outside a fit: by the machine
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), global_rank=0)
    on_gpu = device == "cuda"
    assert dm.train_dataloader().pin_memory == on_gpu and dm.val_dataloader().pin_memory == on_gpu


def test_random_erasing_only_on_training_batches() -> None:
    dm = _datamodule(train_aug=ERASE_ALL, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert dm.train_transform is dm.eval_transform  # erasing alone adds no image transform
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    y = torch.zeros(16, 5).bernoulli_(0.5)  # multi-hot targets go through untouched
    plain = normalize(x, dm.mean, dm.std)
    assert not _erased(plain).any()
    assert torch.equal(dm.on_after_batch_transfer((x, y), 0)[0], plain)  # no trainer: e.g. vit_exp.fewshot_eval
    for training in (False, True):  # the trainer's stage: validating, testing, predicting; or training
        dm.trainer = SimpleNamespace(training=training, precision_plugin=Precision())  # 32-true
        xn, yn = dm.on_after_batch_transfer((x, y), 0)
        assert torch.equal(yn, y)
        assert _erased(xn).all() if training else torch.equal(xn, plain)
    # Mixup/CutMix comes after it, in the training step, and takes the multi-hot targets as they are
    mixed, target = MixupCutmix(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0)(xn, yn)
    assert mixed.shape == xn.shape and target.shape == y.shape


def test_random_erasing_through_a_trainer() -> None:
    """Fit and test with erasing on: the training step sees erased images, validation and test the plain ones."""
    from vit_exp.models import create_model
    from vit_exp.module import ViTModule

    seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen["train"].append(batch[0])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen["val"].append(batch[0])

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen["test"].append(batch[0])

    dm = _datamodule(train_aug=ERASE_ALL, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), eval_batch_size=64)
    model = ViTModule(
        create_model("vit_test", img_size=16, num_classes=10),
        num_classes=10,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert len(seen["train"]) == 2 and all(_erased(x).all() for x in seen["train"])
    for split in ("val", "test"):
        raw, _ = next(iter(dm.val_dataloader() if split == "val" else dm.test_dataloader()))
        assert torch.equal(seen[split][0], normalize(raw, dm.mean, dm.std))


@pytest.mark.parametrize(
    ("erasing", "message"),
    [
        (0.25, r"write e.g. random_erasing: \{prob: 0.25, mode: pixel\}"),
        ({"prob": 2.0}, r"prob must be in \[0, 1\]"),
        ({"prob": 0.25, "mode": "noise"}, "unknown random erasing mode"),
    ],
)
def test_bad_random_erasing_is_a_clear_error(erasing: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _datamodule(train_aug={"hflip": 0.5, "random_erasing": erasing})


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_data_configs_leave_random_erasing_off(name: str) -> None:
    train_aug = compose("train", [f"data={name}"]).data.train_aug
    if train_aug is not None:  # digits: no augmentation at all
        assert train_aug.random_erasing == {"prob": 0.0, "mode": "pixel"}


def test_random_erasing_from_a_data_config(data_module, image_folder) -> None:
    dm = data_module(
        "imagefolder", f"data.root={image_folder}", "data.num_classes=3", "data.train_aug.random_erasing.prob=0.25"
    )
    assert (dm.erasing.prob, dm.erasing.mode) == (0.25, "pixel")
    assert dm.train_transform is not dm.eval_transform
