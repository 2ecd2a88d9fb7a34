"""Under DDP the few-shot evaluation is split between the ranks, not repeated by each: every rank extracts the
features of its share of the images, and all get the result of one process."""

from __future__ import annotations

import threading

import torch
from torch.utils.data import Dataset

from vit_exp.fewshot_eval import fewshot_eval
from vit_exp.models import create_model


class _Split(Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        # images whose mean brightness tells the class apart a little
        self.images = (torch.rand(n, 3, 16, 16, generator=g) * 120 + self.labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class _Source:
    def __init__(self) -> None:
        self.splits = {"train": _Split(31, 0), "val": _Split(17, 1)}  # not a multiple of the world size

    def dataset(self, split: str, transform: object) -> Dataset:
        return self.splits[split]


class _DataModule:  # what fewshot_eval reads of a ViTDataModule
    source, eval_transform, num_workers, eval_batch_size = _Source(), None, 0, 4
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class _Counting(torch.nn.Module):
    """The model, counting the images it extracts features of."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.images = model, 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)


def test_ranks_share_the_images_and_agree_with_one_process() -> None:
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=16, num_classes=3).eval()
    kwargs = {"shots": [1, 5], "seeds": [0, 1], "device": "cpu"}
    alone = _Counting(model)
    expected = fewshot_eval(alone, _DataModule(), **kwargs)
    assert alone.images == 31 + 17

    world, barrier, slots = 2, threading.Barrier(2), {}
    results, counters = {}, {r: _Counting(model) for r in range(2)}

    def all_gather(rank: int, tensor: torch.Tensor) -> torch.Tensor:  # LightningModule.all_gather, over threads
        slots[rank] = tensor
        barrier.wait()
        stacked = torch.stack([slots[r] for r in range(world)])
        barrier.wait()
        return stacked

    def rank_main(rank: int) -> None:
        results[rank] = fewshot_eval(
            counters[rank], _DataModule(), rank=rank, world_size=world, gather=lambda t: all_gather(rank, t), **kwargs
        )

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [counters[r].images for r in range(world)] == [16 + 9, 15 + 8]  # each its share, not all 48
    assert results[0] == results[1] == expected
