"""HFSource on local data only: a save_to_disk folder and an image folder through load_dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_exp.data.hf import HFSource

datasets = pytest.importorskip("datasets")  # a dependency, yet absent from the GPU image (pytest -m gpu there)


@pytest.fixture
def make_saved(tmp_path, make_image, encode_jpeg):
    """make_saved(labels, class_label=True, bad=()) -> save_to_disk folder with train and validation."""

    def make(labels: list[int], class_label: bool = True, bad: tuple[int, ...] = ()) -> Path:
        images = [
            {"bytes": b"junk" if i in bad else encode_jpeg(make_image(seed=i)), "path": None}
            for i in range(len(labels))
        ]
        label = datasets.ClassLabel(names=["cat", "dog", "eel"]) if class_label else datasets.Value("int64")
        features = datasets.Features({"image": datasets.Image(), "label": label})
        ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        path = tmp_path / "saved"
        datasets.DatasetDict(train=ds, validation=ds.select([0, 1])).save_to_disk(str(path))
        return path

    return make


def test_save_to_disk_folder_with_class_labels(make_saved):
    source = HFSource(make_saved([0, 1, 2, 1]))
    assert source.num_classes == 3 and source.class_names == ["cat", "dog", "eel"]
    train = source.dataset("train")
    assert len(train) == 4 and len(source.dataset("val")) == 2
    image, label = train[2]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 32) and label == 2


def test_images_are_decoded_by_us_so_jpeg_can_use_draft_mode(make_saved):
    source = HFSource(make_saved([0, 1]))
    assert source.load_split("train").features["image"].decode is False


def test_plain_integer_labels_need_num_classes_and_are_range_checked(make_saved):
    path = make_saved([0, 1, 5], class_label=False)
    with pytest.raises(ValueError, match="pass num_classes"):
        _ = HFSource(path).num_classes
    source = HFSource(path, num_classes=3)
    assert source.class_names is None
    with pytest.raises(ValueError, match=r"labels in \[0, 5\], outside \[0, 3\)"):
        source.dataset("train")
    assert len(source.dataset("val")) == 2  # labels 0 and 1 are fine


def test_unlabelled_split_is_refused_before_training(make_saved):
    source = HFSource(make_saved([0, -1], class_label=False), num_classes=3)
    with pytest.raises(ValueError, match="unlabelled test splits use -1"):
        source.dataset("train")


def test_user_errors_name_the_fix(make_saved):
    path = make_saved([0, 1])
    with pytest.raises(ValueError, match="drop num_classes or set it to match"):
        HFSource(path, num_classes=10).dataset("train")  # a given num_classes is checked on loading
    with pytest.raises(ValueError, match="no label column 'target'.*set label_column"):
        HFSource(path, label_column="target").dataset("train")
    with pytest.raises(ValueError, match="not 'valid'; map 'val'"):
        HFSource(path, splits={"train": "train", "val": "valid"}).dataset("val")


def test_bad_image_rows_are_skipped_and_counted(make_saved):
    source = HFSource(make_saved([0, 1, 2], bad=(1,)))
    train = source.dataset("train")
    with pytest.warns(UserWarning, match=r"image\[1\]"):
        _, label = train[1]
    assert label == 2 and source.num_skipped == 1
    with pytest.raises(ValueError, match=r"image\[1\].*strict=False"):
        HFSource(source.name_or_path, strict=True).dataset("train")[1]


def test_image_folder_path_goes_through_load_dataset(image_folder, tmp_path):
    source = HFSource(image_folder, cache_dir=str(tmp_path / "hf_cache"))
    assert source.class_names == ["n01", "n02", "n03"]
    val = source.dataset("val")  # datasets names the val/ folder "validation"
    assert len(val) == 6 and len(source.dataset("train")) == 12
    image, label = val[0]
    assert image.dtype == torch.uint8 and 0 <= label < 3


def test_unknown_split_of_a_load_dataset_path(image_folder, tmp_path):
    source = HFSource(image_folder, splits={"test": "holdout"}, cache_dir=str(tmp_path / "hf_cache"))
    with pytest.raises(ValueError, match="splits="):
        source.dataset("test")


def test_hf_config_trains_on_a_saved_dataset(make_saved, data_module):
    path = make_saved([0, 1, 2, 1, 0, 2])
    dm = data_module("hf", f"data.source.name_or_path={path}", "data.num_classes=3", "data.batch_size=2")
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 16, 16) and labels.max() < 3
    assert dm.source.class_names == ["cat", "dog", "eel"]


def test_streaming_an_image_folder(image_folder, tmp_path):
    source = HFSource(image_folder, streaming=True, cache_dir=str(tmp_path / "hf_cache"))
    assert source.num_classes == 3
    samples = list(source.dataset("val"))
    assert sorted(label for _, label in samples) == [0, 0, 1, 1, 2, 2]
    assert all(image.dtype == torch.uint8 for image, _ in samples)
