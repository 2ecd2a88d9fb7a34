"""convert: image folder / Hugging Face dataset -> tar or parquet shards that ShardSource reads back."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from vit_exp.data.convert import convert, main
from vit_exp.data.folder import ImageFolderSource
from vit_exp.data.shards import ShardSource, read_shard

datasets = pytest.importorskip("datasets")  # a dependency, yet absent from the GPU image (pytest -m gpu there)


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_folder_to_shards_and_back(image_folder, tmp_path, fmt):
    out = tmp_path / "shards"
    index = convert(str(image_folder), out, fmt=fmt, shard_size=5)
    assert json.loads((out / "index.json").read_text()) == index
    assert index["class_names"] == ["n01", "n02", "n03"] and index["num_classes"] == 3
    assert index["splits"]["train"]["num_samples"] == 12 and index["splits"]["val"]["num_samples"] == 6
    ext = "tar" if fmt == "wds" else "parquet"
    assert index["splits"]["train"]["shards"] == [f"train-00000{i}.{ext}" for i in range(3)]  # 5 + 5 + 2
    assert index["splits"]["train"]["urls"] == f"train-{{000000..000002}}.{ext}"

    source = ShardSource.from_index(out / "index.json", index_dir=str(tmp_path / "index"))
    labels = Counter(label for _, label in source.dataset("val"))
    assert labels == Counter({0: 2, 1: 2, 2: 2})
    assert sorted(int(label) for _, label in source.dataset("train")) == [0] * 4 + [1] * 4 + [2] * 4

    # encoded JPEG bytes are copied, not re-encoded
    fields = ("jpg", "image")
    written = {
        hashlib.sha1(next(s[f] for f in fields if f in s)).hexdigest()
        for url in source.urls["train"]
        for s in read_shard(url)
    }
    originals = {
        hashlib.sha1(Path(p).read_bytes()).hexdigest() for p, _ in ImageFolderSource(image_folder).samples("train")
    }
    assert written == originals


def test_shards_are_shuffled_across_classes(image_folder, tmp_path):
    index = convert(str(image_folder), tmp_path / "s", shard_size=4, splits=["train"])
    first = [int(s["cls"]) for s in read_shard(str(tmp_path / "s" / index["splits"]["train"]["shards"][0]))]
    assert len(set(first)) > 1  # a class-sorted shard would hold one class only


def test_unreadable_images_are_dropped_and_counted(image_folder, tmp_path):
    (image_folder / "val" / "n01" / "n01_0.JPEG").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="n01_0.JPEG"):
        index = convert(str(image_folder), tmp_path / "s", splits=["val"])
    assert index["splits"]["val"]["num_samples"] == 5 and index["splits"]["val"]["num_skipped"] == 1
    with pytest.raises(ValueError, match="n01_0.JPEG"):
        convert(str(image_folder), tmp_path / "strict", splits=["val"], strict=True)


def test_non_jpeg_images_are_reencoded_as_png(image_folder, tmp_path, make_image):
    make_image().save(image_folder / "val" / "n02" / "odd.bmp")
    index = convert(str(image_folder), tmp_path / "s", splits=["val"], shard_size=100)
    samples = list(read_shard(str(tmp_path / "s" / index["splits"]["val"]["shards"][0])))
    assert sum("png" in s for s in samples) == 1 and sum("jpg" in s for s in samples) == 6


def test_hugging_face_dataset_to_shards(tmp_path, make_image, encode_jpeg):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": encode_jpeg(make_image(seed=i)), "path": None} for i in range(4)], "label": [0, 1, 1, 0]},
        features=features,
    )
    datasets.DatasetDict(train=ds).save_to_disk(str(tmp_path / "hf"))
    index = convert(str(tmp_path / "hf"), tmp_path / "s", fmt="parquet", splits=["train"], shard_size=3)
    assert index["class_names"] == ["x", "y"] and index["splits"]["train"]["num_samples"] == 4
    source = ShardSource.from_index(tmp_path / "s" / "index.json")
    images, labels = zip(*source.dataset("train"), strict=True)
    assert sorted(labels) == [0, 0, 1, 1] and all(i.dtype == torch.uint8 for i in images)


def test_command_line(image_folder, tmp_path, capsys):
    main(
        [
            "--src",
            str(image_folder),
            "--out",
            str(tmp_path / "s"),
            "--format",
            "wds",
            "--shard-size",
            "4",
            "--split",
            "val",
            "--workers",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert "val: 6 samples in 2 shards (val-{000000..000001}.tar)" in printed
    assert (tmp_path / "s" / "index.json").is_file()
