"""ImageFolderSource: classes, labels, listing cache, bad files and the errors users can cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import vit_exp.data.folder as folder
from vit_exp.data.folder import ImageFolderSource


def test_classes_labels_and_samples(image_folder):
    source = ImageFolderSource(image_folder)
    assert source.class_names == ["n01", "n02", "n03"] and source.num_classes == 3
    assert source.multi_label is False
    train = source.dataset("train")
    assert len(train) == 12 and len(source.dataset("val")) == 6 and len(source.dataset("test")) == 6
    image, label = train[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 32)
    assert label == 1 and isinstance(label, int)  # files are in class order: 4 of n01, then n02
    assert [label for _, label in source.samples("val")] == [0, 0, 1, 1, 2, 2]


def test_dataset_applies_the_transform(image_folder):
    from vit_exp.data.transforms import build_eval_transform

    image, _ = ImageFolderSource(image_folder).dataset("val", build_eval_transform(16, 1.0, "bilinear"))[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8


def test_listing_is_cached_and_refreshed_when_a_folder_changes(image_folder, write_jpeg, monkeypatch):
    ImageFolderSource(image_folder).samples("train")
    assert len(list((image_folder / ".vit_exp_cache").glob("filelist-*.json"))) == 1  # train only so far

    scans = []
    real_scan = folder._scan_split
    monkeypatch.setattr(folder, "_scan_split", lambda d: scans.append(d) or real_scan(d))
    assert len(ImageFolderSource(image_folder).samples("train")) == 12
    assert scans == []  # served from the cache file

    write_jpeg(image_folder / "train" / "n02" / "extra.JPEG")
    assert len(ImageFolderSource(image_folder).samples("train")) == 13
    assert scans == [image_folder / "train"]
    assert len(list((image_folder / ".vit_exp_cache").glob("filelist-*.json"))) == 1  # stale one replaced


def test_cache_dir_is_used_instead_of_the_root(image_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    ImageFolderSource(image_folder, cache_dir=cache_dir).samples("val")
    files = list(cache_dir.glob("filelist-*.json"))
    assert len(files) == 2 and not (image_folder / ".vit_exp_cache").exists()
    assert sorted(json.loads(files[0].read_text())["classes"]) == ["n01", "n02", "n03"]


def _break_files(root: Path) -> tuple[Path, Path]:
    """A truncated JPEG and a text file with an image name, both in train/n01."""
    good = root / "train" / "n01" / "n01_1.JPEG"
    truncated = root / "train" / "n01" / "n01_1.JPEG"
    truncated.write_bytes(good.read_bytes()[:200])
    text = root / "train" / "n01" / "n01_2.JPEG"
    text.write_text("not an image")
    return truncated, text


def test_bad_files_are_skipped_counted_and_replaced_by_the_next_sample(image_folder):
    truncated, text = _break_files(image_folder)
    source = ImageFolderSource(image_folder)
    train = source.dataset("train")
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        image, label = train[1]  # 1 and 2 are bad: sample 3 (still class n01) stands in
    messages = " ".join(str(w.message) for w in record)
    assert str(truncated) in messages and str(text) in messages
    assert torch.equal(image, train[3][0]) and label == 0
    assert source.num_skipped == 1 and train.num_skipped == 1  # one sample replaced so far
    with pytest.warns(UserWarning, match="n01_2.JPEG"):
        train[2]
    assert source.num_skipped == 2


def test_skip_count_is_shared_by_loader_workers(image_folder):
    _break_files(image_folder)
    source = ImageFolderSource(image_folder)
    loader = DataLoader(source.dataset("train"), batch_size=4, num_workers=2)
    labels = torch.cat([labels for _, labels in loader])  # the workers warn on their own stderr
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert source.num_skipped == 2


def test_strict_raises_naming_the_file(image_folder):
    truncated, _ = _break_files(image_folder)
    with pytest.raises(ValueError, match=f"{truncated}.*strict=False"):
        ImageFolderSource(image_folder, strict=True).dataset("train")[1]


def test_files_without_an_image_extension_are_ignored_with_a_warning(image_folder):
    (image_folder / "train" / "n01" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="notes.txt"):
        source = ImageFolderSource(image_folder)
    assert len(source.samples("train")) == 12


def test_class_names_come_from_val_when_there_is_no_train(image_folder):
    import shutil

    shutil.rmtree(image_folder / "train")
    source = ImageFolderSource(image_folder)
    assert source.num_classes == 3 and len(source.dataset("val")) == 6
    with pytest.raises(ValueError, match="split folder .*train.* does not exist"):
        source.dataset("train")


def test_user_errors_before_training(image_folder, tmp_path, write_jpeg):
    with pytest.raises(ValueError, match="does not exist; point data.root"):
        ImageFolderSource(tmp_path / "missing")
    with pytest.raises(ValueError, match="none of the split folders"):
        ImageFolderSource(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        ImageFolderSource(image_folder).dataset("holdout")

    (image_folder / "train" / "n04").mkdir()
    with pytest.raises(ValueError, match="n04 has no images"):
        ImageFolderSource(image_folder).dataset("train")

    write_jpeg(image_folder / "val" / "n09" / "x.JPEG")
    with pytest.raises(ValueError, match="n09 is not among the 4 train classes"):
        ImageFolderSource(image_folder).dataset("val")

    flat = tmp_path / "flat"
    write_jpeg(flat / "train" / "a" / "x.jpg")
    write_jpeg(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match="not in class folders"):
        ImageFolderSource(flat).dataset("val")

    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderSource(empty)


@pytest.mark.parametrize("config", ["imagefolder", "imagenet"])
def test_data_configs_train_on_an_image_folder(image_folder, data_module, config, monkeypatch):
    overrides = []
    if config == "imagenet":  # reads ${paths.data_dir}/imagenet, and the fixture folder is named imagenet
        monkeypatch.setenv("VIT_EXP_DATA", str(image_folder.parent))
    else:
        overrides = [f"data.root={image_folder}"]
    dm = data_module(config, "data.num_classes=3", "data.batch_size=4", *overrides)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16) and labels.max() < 3
    assert dm.on_after_batch_transfer((images, labels), 0)[0].dtype == torch.float32
