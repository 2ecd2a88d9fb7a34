"""data=imagenet data.root=PATH: each of the usual ImageNet forms is recognised from what is at root."""

from __future__ import annotations

import pytest
import torch
import webdataset as wds

from vit_exp.data.folder import ImageFolderSource
from vit_exp.data.hf import HFSource
from vit_exp.data.imagenet import imagenet_source
from vit_exp.data.shards import ShardSource

datasets = pytest.importorskip("datasets")  # a dependency, yet absent from the GPU image (pytest -m gpu there)


def test_folder_layout(image_folder):
    source = imagenet_source(image_folder)
    assert isinstance(source, ImageFolderSource) and source.class_names == ["n01", "n02", "n03"]
    assert len(source.dataset("test")) == 6  # test reads val: ImageNet's test labels are not public


def test_hugging_face_copy_on_disk(tmp_path, make_image):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=1000)})
    split = lambda n: datasets.Dataset.from_dict(  # noqa: E731
        {"image": [make_image(seed=i) for i in range(n)], "label": list(range(n))}, features=features
    )
    datasets.DatasetDict({"train": split(4), "validation": split(2)}).save_to_disk(tmp_path / "hf")
    source = imagenet_source(tmp_path / "hf")
    assert isinstance(source, HFSource) and source.num_classes == 1000
    image, label = source.dataset("val")[1]
    assert image.dtype == torch.uint8 and label == 1


def test_timm_wds_shards(tmp_path, make_image, encode_jpeg):
    for split, n in (("train-0000", 4), ("train-0001", 4), ("validation-00", 2)):
        with wds.TarWriter(str(tmp_path / f"imagenet1k-{split}.tar")) as tar:
            for i in range(n):
                tar.write({"__key__": f"{split}_{i}", "jpg": encode_jpeg(make_image(seed=i)), "cls": i})
    source = imagenet_source(tmp_path, batch_size=2)
    assert isinstance(source, ShardSource)
    assert [len(source.urls[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    labels = sorted(int(y) for _, y in source.dataset("val"))
    assert labels == [0, 1]


def test_config_takes_data_root(image_folder, data_module):
    dm = data_module("imagenet", f"data.root={image_folder}", "data.num_classes=3", "data.batch_size=2")
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and dm.root == str(image_folder)


@pytest.mark.parametrize(
    "make_root, message",
    [
        (lambda tmp: tmp / "missing", "does not exist; point it at your ImageNet copy"),
        (lambda tmp: tmp, "holds no ImageNet layout"),
    ],
)
def test_unrecognised_roots_say_what_is_expected(tmp_path, make_root, message):
    with pytest.raises(ValueError, match=message):
        imagenet_source(make_root(tmp_path))


@pytest.mark.parametrize("strict", [True, False])
def test_data_strict_from_the_config(image_folder, data_module, strict):
    (image_folder / "train" / "n01" / "broken.JPEG").write_bytes(b"not a jpeg")
    dm = data_module(
        "imagefolder", f"data.root={image_folder}", "data.num_classes=3", f"data.strict={strict}", "data.batch_size=1"
    )
    dm.setup("fit")
    if strict:
        with pytest.raises(ValueError, match="broken.JPEG"):
            list(dm.train_dataloader())
    else:
        with pytest.warns(UserWarning, match="broken.JPEG"):
            batches = list(dm.train_dataloader())
        assert len(batches) == 13  # the broken file's place is taken by a good image (see _bad_images.py)
        assert dm.source.num_skipped == 1
