"""Few-shot evaluation of a model on a data module: the data side of ``vit_exp.fewshot`` (which is torch only).

``eval_batches`` gives a split through the data's evaluation preprocessing; ``fewshot_eval`` extracts the frozen
features of two splits and scores the ridge classifier on them. Under DDP each rank extracts its share of the
images and the features are gathered, so that the work is split, not repeated (``rank``, ``world_size``,
``gather``). Used by ``eval.py`` (``fewshot.shots=...``) and by the ``FewShotEval`` callback.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from vit_exp.fewshot import DEFAULT_L2, DEFAULT_SEEDS, DEFAULT_SHOTS, extract_features, fewshot_accuracy

log = logging.getLogger(__name__)

Gather = Callable[[torch.Tensor], torch.Tensor]  # (n, ...) on every rank -> (world_size, n, ...), rank order


def fewshot_metric(shots: int) -> str:
    """The logged name of the k-shot accuracy, e.g. ``fewshot/10shot``."""
    return f"fewshot/{shots}shot"


def _subset(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    """At most ``max_images`` of a map-style dataset, drawn at random (class folders are listed in order)."""
    if max_images is None or isinstance(dataset, IterableDataset) or len(dataset) <= max_images:
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:max_images].sort().values.tolist())


def _is_vit_datamodule(datamodule: Any) -> bool:
    return all(hasattr(datamodule, a) for a in ("source", "eval_transform", "mean", "std"))


def _share(dataset: Dataset, rank: int, world_size: int) -> tuple[Dataset, int | None]:
    """(this rank's share of a map-style dataset: every ``world_size``-th item from ``rank`` on, the dataset's
    length); a stream, or one process, as it is, and None."""
    if world_size == 1 or isinstance(dataset, IterableDataset):
        return dataset, None
    return Subset(dataset, range(rank, len(dataset), world_size)), len(dataset)


def _vit_batches(datamodule: Any, dataset: Dataset, device: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from vit_exp.data.transforms import normalize

    batch_size = getattr(datamodule, "eval_batch_size", 256)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=datamodule.num_workers)
    return ((normalize(x.to(device), datamodule.mean, datamodule.std), y) for x, y in loader)


def _cut(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], max_images: int | None) -> Iterator[Any]:
    seen = 0  # a stream (IterableDataset) is cut here rather than subsampled
    for x, y in batches:
        yield x, y
        seen += len(y)
        if max_images is not None and seen >= max_images:
            return


def eval_batches(
    datamodule: Any, split: str, device: torch.device | str, max_images: int | None = None, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images ready for the model, labels) of a split, through the data's *evaluation* preprocessing.

    A ``ViTDataModule`` (anything with ``source``, ``eval_transform``, ``mean`` and ``std``) gives the split
    without augmentation, even for "train". Any other LightningDataModule gives its ``<split>_dataloader()``
    as it is, batches moved to ``device`` and passed through its ``on_after_batch_transfer``.
    """
    if _is_vit_datamodule(datamodule):
        dataset = _subset(datamodule.source.dataset(split, datamodule.eval_transform), max_images, seed)
        return _cut(_vit_batches(datamodule, dataset, device), max_images)
    make_loader = getattr(datamodule, f"{split}_dataloader", None)
    if make_loader is None:
        raise ValueError(f"{type(datamodule).__name__} has no {split}_dataloader(); choose another split")
    batches = (datamodule.on_after_batch_transfer([t.to(device) for t in b[:2]], 0) for b in make_loader())
    return _cut(batches, max_images)


def _gathered(tensor: torch.Tensor, total: int, world_size: int, gather: Gather, device: Any) -> torch.Tensor:
    """All ranks' rows of a split in the split's order, from this rank's ``tensor`` of rows ``rank::world_size``."""
    per_rank = math.ceil(total / world_size)
    padded = torch.zeros((per_rank, *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: len(tensor)] = tensor
    stacked = gather(padded.to(device)).cpu()  # (world_size, per_rank, ...)
    return stacked.transpose(0, 1).reshape(per_rank * world_size, *tensor.shape[1:])[:total]


def _split_features(
    model: nn.Module, datamodule: Any, split: str, device: Any, max_images: int | None,
    rank: int, world_size: int, gather: Gather | None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(features, labels) of a whole split; under DDP each rank computes its share and the shares are gathered."""
    if world_size == 1 or gather is None or not _is_vit_datamodule(datamodule):
        return extract_features(model, eval_batches(datamodule, split, device, max_images), device)
    dataset = _subset(datamodule.source.dataset(split, datamodule.eval_transform), max_images, 0)
    share, total = _share(dataset, rank, world_size)
    feats, labels = extract_features(model, _cut(_vit_batches(datamodule, share, device), max_images), device)
    if total is None:  # a stream, which its source splits by rank already: each rank scores its own part
        return feats, labels
    return _gathered(feats, total, world_size, gather, device), _gathered(labels, total, world_size, gather, device)


def fewshot_eval(
    model: nn.Module,
    datamodule: Any,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    l2_reg: float = DEFAULT_L2,
    train_split: str = "train",
    test_split: str = "val",
    max_images: int | None = None,
    device: torch.device | str | None = None,
    context: Any = None,
    rank: int = 0,
    world_size: int = 1,
    gather: Gather | None = None,
) -> dict[int, float]:
    """Few-shot top-1 (0..1) of ``model``'s frozen pre-logit features on a classification data module.

    The k shots per class are drawn (once per seed) from ``train_split``; the accuracy is measured on all of
    ``test_split`` (at most ``max_images`` of each split, drawn at random, when given).

    Args:
        model: A ``vit_exp.models`` ViT (anything with ``forward_features`` and ``forward_head``).
        datamodule: A ``ViTDataModule``, or any LightningDataModule yielding (images, integer labels).
        context: A context manager factory to run the forward passes in (e.g. the trainer's precision);
            None: plain float.
        rank, world_size, gather: Under DDP, this process's rank, the number of processes and an all-gather
            (``LightningModule.all_gather``): every rank extracts the features of its share of a ``ViTDataModule``'s
            map-style splits and all get the same result. Every rank must call it (the gather is a collective).

    Raises:
        ValueError: the data is multi-label (few-shot ridge needs one class per image).
    """
    if getattr(datamodule, "multi_label", False):
        raise ValueError("few-shot evaluation needs single-label data; this data module is multi-label")
    device = device if device is not None else next(model.parameters()).device
    with context() if context else nullcontext():
        train = _split_features(model, datamodule, train_split, device, max_images, rank, world_size, gather)
        test = _split_features(model, datamodule, test_split, device, max_images, rank, world_size, gather)
    result = fewshot_accuracy(*train, *test, shots=shots, seeds=seeds, l2_reg=l2_reg)
    skipped = sorted(set(shots) - set(result))
    if skipped:
        log.warning(
            "few-shot: skipped %s shots: a class of the %s split has fewer images (raise max_images?)",
            skipped,
            train_split,
        )
    return result
