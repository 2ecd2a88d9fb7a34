"""Sharded training data resumes mid-epoch exactly: in-process (loader state), and as runs SIGKILLed and resumed.

Every sample's label is its own id, so a batch's targets say which samples it holds.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from tests.scale.test_exact_resume import assert_runs_match, train_killed_then_resumed
from vit_exp.data.order import resumable_loader
from vit_exp.data.shard_index import ShardReader
from vit_exp.data.shards import ShardSource
from vit_exp.data.stream import rank_order

pa = pytest.importorskip("pyarrow")  # a dependency, yet a bare image may lack it: skip there, not a collection error
pq = pytest.importorskip("pyarrow.parquet")

SHARDS, PER_SHARD = 10, 12


def _jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()


def write_shards(root: Path, fmt: str, shards: int = SHARDS, per_shard: int = PER_SHARD) -> str:
    """``shards`` tar or parquet shards of ``per_shard`` samples labelled 0, 1, ...; returns their brace pattern."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        ids = range(s * per_shard, (s + 1) * per_shard)
        if fmt == "tar":
            with wds.TarWriter(str(root / f"train-{s:03d}.tar")) as tar:
                for i in ids:
                    tar.write({"__key__": f"k{i}", "jpg": _jpeg(i), "cls": str(i).encode()})
        else:
            table = {"key": [f"k{i}" for i in ids], "image": [{"bytes": _jpeg(i), "path": None} for i in ids]}
            pq.write_table(pa.table({**table, "label": list(ids)}), root / f"train-{s:03d}.parquet", row_group_size=5)
    return str(root / f"train-{{000..{shards - 1:03d}}}.{fmt}")


def _loader(urls: str, tmp: Path, workers: int = 0, rank: int = 0, world: int = 1, total: int = 96, classes: int = 120):
    source = ShardSource(
        {"train": urls}, num_classes=classes, samples_per_epoch={"train": total}, batch_size=4,
        rank=rank, world_size=world, index_dir=tmp / "index",
    )  # fmt: skip
    return resumable_loader(source.dataset("train"), 4, num_workers=workers, drop_last=True, persistent_workers=workers > 0)


def _batches(loader, n: int | None = None) -> list[tuple[torch.Tensor, list[int]]]:
    out = []
    for images, targets in loader:
        out.append((images, targets.tolist()))
        if n is not None and len(out) == n:
            break
    return out


def test_order_is_a_function_of_seed_and_epoch_not_of_workers(tmp_path):
    urls = write_shards(tmp_path / "tar", "tar")
    runs = {w: _loader(urls, tmp_path, workers=w) for w in (0, 1, 2)}
    first = {w: _batches(loader) for w, loader in runs.items()}
    for w in (1, 2):
        assert [t for _, t in first[w]] == [t for _, t in first[0]]
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first[w], first[0], strict=True))  # augmentation too
    labels = [i for _, targets in first[0] for i in targets]
    assert len(first[0]) == 24 and len(set(labels)) == 96  # 96 of the 120 samples, none twice
    runs[2].batch_sampler.sampler.set_epoch(1)  # what Lightning calls at each epoch's start
    assert [t for _, t in _batches(runs[2])] != [t for _, t in first[0]]
    # shuffled across shards: a batch of 4 draws from several of the 8 interleaved shards
    assert np.mean([len({i // PER_SHARD for i in t}) for _, t in first[0]]) > 2


@pytest.mark.parametrize("fmt", ["tar", "parquet"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_serves_the_rest_exactly(tmp_path, fmt, workers, monkeypatch):
    urls = write_shards(tmp_path / fmt, fmt)
    whole = _batches(_loader(urls, tmp_path, workers=workers, total=200))  # more than the data: a second pass
    cut = _loader(urls, tmp_path, workers=workers, total=200)
    assert [t for _, t in _batches(cut, 7)] == [t for _, t in whole[:7]]
    state = cut.state_dict()
    assert state["epoch"] == 0 and state["batches"] == 7
    reads = Counter()
    original = ShardReader.sample
    monkeypatch.setattr(ShardReader, "sample", lambda self, s, m: reads.update([1]) or original(self, s, m))
    resumed = _loader(urls, tmp_path, workers=workers, total=200)
    resumed.load_state_dict(state)
    rest = _batches(resumed)
    assert [t for _, t in rest] == [t for _, t in whole[7:]]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(rest, whole[7:], strict=True))
    if workers == 0:  # counted in this process: the consumed part of the epoch is not read again
        assert reads[1] == 200 - 7 * 4


def test_elastic_two_ranks_then_one_serves_the_rest_once_as_a_set(tmp_path):
    urls = write_shards(tmp_path / "tar", "tar")
    consumed = []
    for rank in range(2):
        loader = _loader(urls, tmp_path, rank=rank, world=2, total=120)
        consumed += [i for _, t in _batches(loader, 5) for i in t]
        state = loader.state_dict()  # the same on both ranks: 5 batches of epoch 0 on 2 ranks
    resumed = _loader(urls, tmp_path, rank=0, world=1, total=120)
    resumed.load_state_dict(state)
    rest = [i for _, t in _batches(resumed) for i in t]
    assert len(rest) == 120 - 2 * 5 * 4 and sorted(consumed + rest) == list(range(120))
    # preempted again within that epoch, now on 1 rank: still each sample once
    again = _loader(urls, tmp_path, total=120)
    again.load_state_dict(state)
    first = [i for _, t in _batches(again, 3) for i in t]
    twice = _loader(urls, tmp_path, total=120)
    twice.load_state_dict(again.state_dict())
    assert first + [i for _, t in _batches(twice) for i in t] == rest


def _cut_tar(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_bad_shards_are_skipped_counted_and_resume_stays_exact(tmp_path):
    urls = write_shards(tmp_path / "tar", "tar")
    _cut_tar(tmp_path / "tar" / "train-003.tar", 0.5)  # truncated mid-shard
    with tarfile.open(tmp_path / "tar" / "train-005.tar") as tar:  # a corrupt image mid-shard
        offset = tar.getmember("k65.jpg").offset_data
    with open(tmp_path / "tar" / "train-005.tar", "r+b") as f:
        f.seek(offset)
        f.write(b"garbage!" * 8)
    with pytest.warns(UserWarning, match="the end of shard .*train-003.tar .*sample k4[0-9]"):
        whole = _loader(urls, tmp_path, total=96)
    batches = [t for _, t in _batches(whole)]
    assert all(len(t) == 4 for t in batches) and len(batches) == 24
    labels = [i for t in batches for i in t]
    assert 65 not in labels and whole.dataset.source.num_skipped == 2  # the cut shard's tail, the corrupt image
    assert Counter(labels).most_common(1)[0][1] == 2  # k65's place went to the next sample of the order
    cut = _loader(urls, tmp_path, total=96)
    _batches(cut, 12)
    resumed = _loader(urls, tmp_path, total=96)
    resumed.load_state_dict(cut.state_dict())
    assert [t for _, t in _batches(resumed)] == batches[12:]
    strict = ShardSource(
        {"train": urls}, num_classes=120, samples_per_epoch={"train": 96}, batch_size=4, index_dir=tmp_path / "index",
        strict=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="train-003.tar .*sample k4[0-9]"):
        strict.dataset("train")


def test_resume_time_of_an_epoch_of_100_shards(tmp_path, capsys):
    urls = write_shards(tmp_path / "tar", "tar", shards=100, per_shard=10)
    t0 = time.perf_counter()
    loader = _loader(urls, tmp_path, total=1000, classes=1000)
    built = time.perf_counter() - t0
    _batches(loader, 150)
    state = loader.state_dict()
    t0 = time.perf_counter()
    resumed = _loader(urls, tmp_path, total=1000, classes=1000)  # indices cached now, as on any resume
    resumed.load_state_dict(state)
    next(iter(resumed))
    took = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n100 shards: index built in {built:.2f} s; resumed at batch 150 of 250, first batch in {took:.2f} s")
    assert state["batches"] == 150


def _run(urls: str, tmp: Path, workers: int) -> list[str]:
    return [
        "model=vit_test", "model.drop_path_rate=0.1", "data=jft", f"data.source.urls.train='{urls}'",
        f"data.source.urls.val='{urls}'", f"data.source.urls.test='{urls}'",
        "data.source.samples_per_epoch.train=120", "data.num_classes=120", "data.source.multi_label=false",
        "data.batch_size=8", f"data.num_workers={workers}", f"data.source.index_dir={tmp / 'index'}",
        "trainer.max_epochs=2", "seed=3", "resume=auto", "callbacks.step_checkpoint.every_n_train_steps=4",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false",
    ]  # fmt: skip


KILLED = [
    pytest.param("tar", 2, "cpu", id="tar-2workers"),
    pytest.param("tar", 0, "cpu", id="tar-0workers", marks=pytest.mark.slow),
    pytest.param("parquet", 0, "cpu", id="parquet-0workers", marks=pytest.mark.slow),
    pytest.param("parquet", 2, "cpu", id="parquet-2workers", marks=pytest.mark.slow),
    pytest.param("tar", 0, "ddp_sim", id="tar-ddp_sim", marks=pytest.mark.slow),
    pytest.param("parquet", 2, "ddp_sim", id="parquet-2workers-ddp_sim", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("fmt", "workers", "hw"), KILLED)
def test_killed_mid_epoch_then_resumed_matches_an_uninterrupted_run(tmp_path, fmt, workers, hw):
    urls = write_shards(tmp_path / fmt, fmt)
    steps = 120 // (8 * (2 if hw == "ddp_sim" else 1))  # 15 a rank: checkpoints at 4, 8, ... are mid-epoch
    cut, reference = train_killed_then_resumed([*_run(urls, tmp_path, workers), f"hw={hw}"], tmp_path, steps, 2)
    assert_runs_match(cut, reference, 2 * steps)


@pytest.mark.slow
def test_killed_on_two_ranks_resumed_on_one_serves_the_rest_of_the_epoch_once(tmp_path):
    urls = write_shards(tmp_path / "tar", "tar")
    record = tmp_path / "targets.jsonl"
    run = [*_run(urls, tmp_path, 0), "trainer.max_epochs=1", "+callbacks.record._target_=tests.scale.helpers.RecordTargets",
           f"+callbacks.record.path={record}"]  # fmt: skip
    train_killed_then_resumed([*run, "hw=ddp_sim"], tmp_path, 120 // 16, 1, ["hw=cpu"], reference=False)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    resumed = [line for line in lines if line["pid"] == lines[-1]["pid"]]  # the 1-rank run
    resumed_from = resumed[0]["step"]  # the checkpoint's step
    before = [i for line in lines if line["pid"] != lines[-1]["pid"] and line["step"] < resumed_from for i in line["targets"]]
    after = [i for line in resumed for i in line["targets"]]
    assert {line["rank"] for line in lines if line not in resumed} == {0, 1}
    # the 2-rank epoch: 56 samples a rank (120 // 2 in whole batches of 8), labels shard * 12 + member
    epoch = [s * PER_SHARD + m for r in range(2) for s, m, _ in rank_order([PER_SHARD] * SHARDS, 3, 0, r, 2, 56, 8, 1024)]
    assert len(before) < 112 and sorted(before + after) == sorted(epoch)
