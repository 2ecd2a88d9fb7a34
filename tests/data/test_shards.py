"""ShardSource: tar and parquet shards, splitting by rank and worker, fixed epochs, multi-label."""

from __future__ import annotations

import json

import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from vit_exp.data.shards import ShardSource, expand_urls, multi_hot, parse_label
from vit_exp.errors import ConfigError

pa = pytest.importorskip("pyarrow")  # a dependency, yet a bare image may lack it: skip there, not a collection error
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def write_tar_shards(tmp_path, make_image, encode_jpeg):
    """write_tar_shards(labels per shard, label_field="cls") -> brace pattern of the shard files."""

    def write(shards: list[list], field: str = "cls") -> str:
        for s, labels in enumerate(shards):
            with wds.TarWriter(str(tmp_path / f"train-{s:02d}.tar")) as tar:
                for i, label in enumerate(labels):
                    value = json.dumps({"labels": label}) if field == "json" else str(label)
                    tar.write(
                        {"__key__": f"s{s}_{i}", "jpg": encode_jpeg(make_image(16, 12, seed=i)), field: value.encode()}
                    )
        return str(tmp_path / f"train-{{00..{len(shards) - 1:02d}}}.tar")

    return write


def test_multi_hot():
    assert multi_hot([0, 3], 5).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert multi_hot([], 3).tolist() == [0.0, 0.0, 0.0]
    assert multi_hot([19_999], 20_000)[19_999] == 1.0
    with pytest.raises(ValueError, match="outside"):
        multi_hot([5], 5)


def test_parse_label_reads_every_encoding():
    assert parse_label(b"7\n", "cls") == 7
    assert parse_label(b'{"labels": [1, 4]}', "json") == [1, 4]
    assert parse_label(b"3", "json") == 3
    assert parse_label({"label": 2}, "json") == 2
    assert parse_label([5, 6], "labels") == [5, 6]
    assert parse_label(9, "label") == 9


def test_expand_urls():
    assert expand_urls("a-{0..2}.tar") == ["a-0.tar", "a-1.tar", "a-2.tar"]
    assert expand_urls(["x.tar", "y-{a,b}.tar"]) == ["x.tar", "y-a.tar", "y-b.tar"]


@pytest.mark.parametrize("resumable", [True, False])
def test_two_ranks_by_two_workers_see_disjoint_samples_and_equal_batches(write_tar_shards, tmp_path, resumable):
    # 8 shards x 3 samples, each sample's label is its unique id
    urls = write_tar_shards([[3 * s + i for i in range(3)] for s in range(8)])
    seen, batches = [], []
    for rank in range(2):
        source = ShardSource(
            {"train": urls}, num_classes=24, samples_per_epoch={"train": 24}, rank=rank, world_size=2,
            batch_size=3, resumable=resumable, index_dir=tmp_path / "index",
        )  # fmt: skip
        loader = DataLoader(source.dataset("train"), batch_size=3, num_workers=2)
        labels = [batch_labels.tolist() for _, batch_labels in loader]
        batches.append(len(labels))
        seen.append({label for batch in labels for label in batch})
    assert batches[0] == batches[1] == len(loader) == 4
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(24))


@pytest.mark.parametrize("resumable", [True, False])
def test_stream_repeats_to_a_fixed_epoch_of_whole_batches(write_tar_shards, tmp_path, resumable):
    urls = write_tar_shards([[0, 1, 2], [3, 4]])  # 5 samples, unequal shards
    source = ShardSource(
        {"train": urls}, num_classes=5, samples_per_epoch={"train": 13}, batch_size=4, resumable=resumable,
        index_dir=tmp_path / "index",
    )  # fmt: skip
    loader = DataLoader(source.dataset("train"), batch_size=4, num_workers=2)
    sizes = [len(labels) for _, labels in loader]
    assert sizes == [4, 4, 4] == [4] * len(loader)  # 13 rounds down to 3 whole batches


def test_each_epoch_is_a_new_shuffle_of_the_same_samples(write_tar_shards, tmp_path):
    urls = write_tar_shards([list(range(s * 6, s * 6 + 6)) for s in range(4)])
    dataset = ShardSource(
        {"train": urls}, num_classes=24, samples_per_epoch={"train": 24}, shuffle_buffer=8, resumable=False
    ).dataset("train")
    torch.manual_seed(0)
    first, second = ([label for _, label in dataset] for _ in range(2))
    assert sorted(first) == sorted(second) == list(range(24))
    assert first != second
    resumable = ShardSource(
        {"train": urls}, num_classes=24, samples_per_epoch={"train": 24}, batch_size=4, index_dir=tmp_path / "index"
    ).dataset("train")
    first = [label for _, label in resumable]
    resumable.set_epoch(1)
    second = [label for _, label in resumable]
    assert sorted(first) == sorted(second) == list(range(24)) and first != second
    resumable.set_epoch(0)
    assert [label for _, label in resumable] == first  # a function of (seed, epoch)


def test_val_is_read_once_in_order_without_a_set_length(write_tar_shards):
    urls = write_tar_shards([[0, 1, 2], [3, 4]])
    dataset = ShardSource({"val": urls}, num_classes=5).dataset("val")
    assert [label for _, label in dataset] == [0, 1, 2, 3, 4]
    with pytest.raises(TypeError):
        len(dataset)


def test_multi_label_tar_shards_end_to_end(write_tar_shards):
    labels = [[[0, 2], [19_000]], [[1], [3, 4, 19_999]]]
    urls = write_tar_shards(labels, field="json")
    source = ShardSource({"val": urls}, num_classes=20_000, multi_label=True)
    images, targets = zip(*source.dataset("val"), strict=True)
    assert images[0].dtype == torch.uint8 and images[0].shape == (3, 12, 16)
    assert all(t.dtype == torch.float32 and t.shape == (20_000,) for t in targets)
    assert [t.nonzero().flatten().tolist() for t in targets] == [ids for shard in labels for ids in shard]


def test_multi_label_parquet_shards_end_to_end(tmp_path, make_image, encode_jpeg):
    rows = [[1, 2], [0], [2]]
    for s in range(2):
        pq.write_table(
            pa.table(
                {
                    "image": [{"bytes": encode_jpeg(make_image(16, 12, seed=i)), "path": None} for i in range(3)],
                    "labels": rows,
                }
            ),
            tmp_path / f"val-{s}.parquet",
        )
    source = ShardSource({"val": str(tmp_path / "val-{0..1}.parquet")}, num_classes=3, multi_label=True)
    targets = [target.tolist() for _, target in source.dataset("val")]
    assert targets == [[0, 1, 1], [1, 0, 0], [0, 0, 1]] * 2


def test_bad_images_are_skipped_and_labels_checked(tmp_path, make_image, encode_jpeg):
    path = tmp_path / "val-0.tar"
    with wds.TarWriter(str(path)) as tar:
        tar.write({"__key__": "ok", "jpg": encode_jpeg(make_image()), "cls": b"1"})
        tar.write({"__key__": "broken", "jpg": b"junk", "cls": b"0"})
    source = ShardSource({"val": str(path), "test": str(path)}, num_classes=2)
    with pytest.warns(UserWarning, match="broken in .*val-0.tar"):
        assert [label for _, label in source.dataset("val")] == [1]
    assert source.num_skipped == 1
    with pytest.raises(ValueError, match="label 1 is outside"):
        list(ShardSource({"val": str(path)}, num_classes=1).dataset("val"))
    with pytest.raises(ValueError, match="multi_label=True"):
        ShardSource({"val": str(path)}, num_classes=2).target([0, 1])
    with pytest.raises(ValueError, match="no image field .* set image_key"):
        list(ShardSource({"val": str(path)}, num_classes=2, image_key="png").dataset("val"))


def test_user_errors_before_training(write_tar_shards):
    urls = write_tar_shards([[0, 1]])
    with pytest.raises(ValueError, match="set samples_per_epoch.train"):
        ShardSource({"train": urls}, num_classes=2).dataset("train")
    with pytest.raises(ValueError, match="1 shards for 4 ranks"):
        ShardSource({"val": urls}, num_classes=2, rank=0, world_size=4).dataset("val")
    with pytest.raises(ValueError, match="no shards for split 'test'"):
        ShardSource({"val": urls}, num_classes=2).dataset("test")
    with pytest.raises(ValueError, match="pass both rank and world_size"):
        ShardSource({"val": urls}, num_classes=2, rank=1).dataset("val")
    source = ShardSource({"train": urls}, num_classes=2, samples_per_epoch={"train": 4}, resumable=False)
    loader = DataLoader(source.dataset("train"), num_workers=2)
    with pytest.raises(ValueError, match="worker 1 has no shard"):
        list(loader)
    with pytest.raises(ValueError, match="not a local file.*resumable=false"):
        ShardSource({"train": "pipe:cat x.tar"}, num_classes=2, samples_per_epoch={"train": 4}, batch_size=2).dataset(
            "train"
        )
    # with whole batches of 4, worker 0 does the one batch and worker 1 has nothing to do
    source = ShardSource({"train": urls}, num_classes=2, samples_per_epoch={"train": 4}, batch_size=4, resumable=False)
    assert [len(labels) for _, labels in DataLoader(source.dataset("train"), batch_size=4, num_workers=2)] == [4]


def test_from_index_reads_convert_output(tmp_path):
    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "format": "wds",
                "num_classes": 2,
                "class_names": ["a", "b"],
                "multi_label": False,
                "splits": {
                    "train": {"num_samples": 7, "shards": ["train-000000.tar"]},
                    "val": {"num_samples": 3, "shards": ["val-000000.tar"]},
                },
            }
        )
    )
    source = ShardSource.from_index(tmp_path / "index.json", shuffle_buffer=10)
    assert source.urls == {
        "train": [str(tmp_path / "train-000000.tar")],
        "val": [str(tmp_path / "val-000000.tar")],
        "test": [str(tmp_path / "val-000000.tar")],
    }
    assert source.samples_per_epoch == {"train": 7} and source.class_names == ["a", "b"] and source.shuffle_buffer == 10
    with pytest.raises(ValueError, match="vit_exp.data.convert"):
        ShardSource.from_index(tmp_path / "missing.json")


def test_jft_config_trains_multi_label_on_tar_shards(write_tar_shards, data_module, tmp_path):
    urls = write_tar_shards([[[0, 2], [1]], [[2], [0, 1]]], field="json")
    dm = data_module(
        "jft",
        f"data.source.urls.train='{urls}'",
        f"data.source.urls.val='{urls}'",
        "data.source.samples_per_epoch.train=4",
        "data.num_classes=3",
        "data.batch_size=2",
        f"data.source.index_dir={tmp_path / 'index'}",
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    images, targets = batches[0]
    assert images.shape == (2, 3, 16, 16) and targets.shape == (2, 3) and targets.dtype == torch.float32
    assert sorted(t.tolist() for _, ts in batches for t in ts) == [[0, 0, 1], [0, 1, 0], [1, 0, 1], [1, 1, 0]]


def test_eval_reads_a_stream_without_its_training_length(write_tar_shards, tmp_path):
    """data=jft leaves samples_per_epoch.train=??? to the user; eval.py reads the test split only and does not
    ask for it (it stopped with "this config needs values you have not given")."""
    from tests.conftest import TINY, compose
    from vit_exp import run
    from vit_exp.models import create_model

    urls = write_tar_shards([[[0, 2], [1]], [[2], [0, 1]]], field="json")
    weights = tmp_path / "vit_test.pth"
    torch.save(create_model("vit_test", num_classes=3).state_dict(), weights)
    overrides = [*TINY, "data=jft", f"data.source.urls.test='{urls}'", "data.num_classes=3", "data.batch_size=2",
                 "data.num_workers=0", f"model.pretrained={weights}"]  # fmt: skip
    results = run.evaluate(compose("eval", overrides, tmp_path / "eval"))
    assert results.images == 4 and (tmp_path / "eval" / "results.json").is_file()
    with pytest.raises(ConfigError, match=r"samples_per_epoch.train=\.\.\."):  # training still asks for it
        run.train(compose("train", [*TINY, "data=jft", f"data.source.urls.train='{urls}'", "data.num_classes=3"],
                          tmp_path / "train"))  # fmt: skip


def test_a_stream_set_up_before_the_process_group_is_built_again_for_its_rank(
    write_tar_shards, data_module, tmp_path, monkeypatch
):
    """run.py sets the data up before Lightning starts the process group; Lightning's own setup on each rank must
    then give that rank its own shards, not rank 0's of a world of one (every rank reading every shard)."""
    from vit_exp.data import datamodule, shards

    urls = write_tar_shards([[0, 1], [2, 3]])
    dm = data_module("jft", f"data.source.urls.train='{urls}'", f"data.source.urls.val='{urls}'",
                     "data.source.samples_per_epoch.train=4", "data.num_classes=4", "data.batch_size=2",
                     "data.source.multi_label=false", f"data.source.index_dir={tmp_path / 'index'}")  # fmt: skip
    dm.setup("fit")
    assert sorted(label for _, label in dm.datasets["val"]) == [0, 1, 2, 3]  # a world of one reads every shard
    for module in (datamodule, shards):  # as rank 1 of 2 once DDP has started (both ask torch.distributed)
        monkeypatch.setattr(module, "rank_and_world_size", lambda rank=None, world=None: (rank, world) if world else (1, 2))
    dm.setup("fit")
    assert sorted(label for _, label in dm.datasets["val"]) == [2, 3]  # rank 1's shard alone
