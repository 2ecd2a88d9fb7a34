"""``ViTDataModule``: loaders, transforms and normalisation around any Source (digits, folders, HF, shards)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vit_exp.data.device_decode import DeviceDecode, EncodedBatch, ReadEncoded, collate_encoded
from vit_exp.data.erasing import RandomErasing
from vit_exp.data.order import RepeatedAugSampler, ResumableStream, rank_and_world_size, resumable_loader
from vit_exp.data.transforms import Transform, build_eval_transform, build_train_transform, normalize
from vit_exp.errors import ConfigError
from vit_exp.hw import usable_cpus
from vit_exp.rules import DECODES, SPLITS

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where images come from. Yields (uint8 image (3, H, W), target) through the transform it is given."""

    num_classes: int
    class_names: list[str] | None
    multi_label: bool  # targets are multi-hot float vectors when True

    def dataset(self, split: str, transform: Transform) -> Dataset: ...


class ViTDataModule(pl.LightningDataModule):
    """Train/val/test loaders over a Source; images stay uint8 until ``on_after_batch_transfer``.

    Preprocessing (``crop_pct``, ``interpolation``, ``mean``, ``std``) is the model's (``pretrained_cfg``);
    ``vit_exp.build`` fills it in where the data config leaves it null.

    Args:
        source: A Source (``DigitsSource``, ``ImageFolderSource``, ``HFSource``, ``ShardSource``).
        batch_size: Images per device and step.
        num_workers: Loader processes per device; at most the CPUs this process may use (``usable_cpus``).
        img_size: Side of the model's input.
        crop_pct: Evaluation center-crop fraction (resize to ``img_size / crop_pct``, crop ``img_size``).
        interpolation: Resize filter, e.g. "bicubic".
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.
        train_aug: Arguments of ``build_train_transform`` (scale, hflip, randaugment, crop), plus
            ``random_erasing``: arguments of ``RandomErasing`` (prob, mode, ...), applied to normalised
            training batches on the device; without transform arguments (None) training images get the
            evaluation transform.
        num_classes: Expected classes; checked against the source's (None: the source's).
        eval_batch_size: Batch size of val/test loaders (None: ``batch_size``).
        test_split: The split ``test`` evaluates (e.g. "val" for ImageNet, whose test labels are not public).
        name: What to call the data in summaries ("digits", "imagenet").
        repeated_aug: Copies of each training image per epoch, each on another rank (DeiT: 3); 1 is off.
        root: Where the data lives, when it lives on disk; sources read it as ``${data.root}`` so that
            ``data.root=PATH`` is all a user types.
        strict: Whether an unreadable image stops the run (sources read it as ``${data.strict}``); False
            skips and counts it.
        decode: "host": loader workers decode and augment; "device": they read JPEG bytes and draw the crop and
            flip, and ``on_after_batch_transfer`` decodes and augments the batch on the device
            (``vit_exp.data.device_decode``). ``train_transform`` / ``eval_transform`` stay the host ones.
    """

    def __init__(
        self,
        source: Source,
        batch_size: int = 64,
        num_workers: int = 4,
        img_size: int = 224,
        crop_pct: float = 0.9,
        interpolation: str = "bicubic",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        train_aug: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        eval_batch_size: int | None = None,
        test_split: str = "test",
        name: str | None = None,
        root: str | None = None,
        repeated_aug: int = 1,
        strict: bool = False,
        decode: str = "host",
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes != source.num_classes:
            raise ConfigError(
                f"data.num_classes is {num_classes} but the source has {source.num_classes} classes; "
                f"set data.num_classes={source.num_classes} (or null to take the source's)"
            )
        if test_split not in SPLITS:
            raise ConfigError(f"test_split must be one of {SPLITS}, got {test_split!r}")
        self.source = source
        self.name = name or type(source).__name__
        self.root, self.strict = root, strict
        self.repeated_aug = repeated_aug
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if num_workers > (cpus := usable_cpus()):  # more would only compete for the same cores (torch warns)
            log.info("data.num_workers=%d capped to %d: the CPUs this process may use", num_workers, cpus)
            num_workers = cpus
        self.num_workers = num_workers
        self.img_size = img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.test_split = test_split
        self.eval_transform = build_eval_transform(img_size, crop_pct, interpolation)
        transform_args = dict(train_aug or {})
        erasing = transform_args.pop("random_erasing", None)
        self.train_transform = (
            build_train_transform(img_size, interpolation, **transform_args) if transform_args else self.eval_transform
        )
        if erasing is not None and not isinstance(erasing, Mapping):
            raise ConfigError(
                f"train_aug.random_erasing must be a mapping of RandomErasing's arguments, got {erasing!r}; "
                "write e.g. random_erasing: {prob: 0.25, mode: pixel}"
            )
        # Erasing works on whole normalised batches on the device (on_after_batch_transfer), not per image.
        self.erasing = RandomErasing(**erasing) if erasing else None
        self.device_decode = self._device_decode(decode, img_size, crop_pct, interpolation)
        self.datasets: dict[str, Dataset] = {}
        self._placed: dict[str, tuple[int, int]] = {}  # split -> (rank, world size) its stream was built for

    def _device_decode(self, decode: str, img_size: int, crop_pct: float, interpolation: str) -> DeviceDecode | None:
        if decode not in DECODES:
            raise ConfigError(f"data.decode={decode} is not one of {', '.join(DECODES)}; set e.g. data.decode=device")
        if decode == "host":
            return None
        if getattr(self.train_transform, "randaugment", None) is not None:
            raise ConfigError(
                "data.decode=device crops and flips on the device but has no RandAugment; set "
                "data.train_aug.randaugment=null, or data.decode=host"
            )
        return DeviceDecode(img_size, crop_pct, interpolation, self.strict)

    def _transform(self, split: str) -> Transform:
        train = split == "train" and self.train_transform is not self.eval_transform
        if self.device_decode is not None:
            return ReadEncoded(self.train_transform if train else None)  # type: ignore[arg-type]
        return self.train_transform if train else self.eval_transform

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def multi_label(self) -> bool:
        return self.source.multi_label

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": (self.test_split,)}.get(stage, SPLITS)
        placed = rank_and_world_size()
        for split in wanted:
            built = self.datasets.get(split)
            # A stream takes this rank's shards when it is built; one built before the process group started
            # (run.py sets the data up first, to check it) is built again for its rank. A ResumableStream places
            # itself when its loader is made; map-style splits are split among ranks by their samplers.
            moved = self._placed.get(split, placed) != placed
            if built is None or (isinstance(built, IterableDataset) and not isinstance(built, ResumableStream) and moved):
                self.datasets[split] = self.source.dataset(split, self._transform(split))
                self._placed[split] = placed

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self.datasets[split]
        # a ResumableStream (sharded training data) orders itself and keeps its place like the map-style order
        shuffle = train and (not isinstance(dataset, IterableDataset) or isinstance(dataset, ResumableStream))
        kwargs = {
            "batch_size": self.batch_size if train else self.eval_batch_size,
            "drop_last": train,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": self._pin_memory(),
        }
        if self.device_decode is not None:
            kwargs["collate_fn"] = collate_encoded
        if not shuffle:
            if isinstance(dataset, IterableDataset):
                # Its own generator: a streamed eval loader's persistent workers, first started at the first
                # validation (after a resume: later than in the uninterrupted run), then draw no number from the
                # global RNG that ExactResume restores (map-style eval loaders keep the default: the default run)
                kwargs["generator"] = torch.Generator().manual_seed(0)
            return DataLoader(dataset, **kwargs)
        sampler = None
        if self.repeated_aug > 1:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            # torch.initial_seed() is the run's seed (seed_everything), the same on every rank.
            seed = torch.initial_seed() % 2**31
            sampler = RepeatedAugSampler(len(dataset), self.repeated_aug, rank, world, seed=seed)
        # Its position mid-epoch is saved in checkpoints, and each image is augmented with its own seed: an exact
        # resume (vit_exp.data.order).
        return resumable_loader(dataset, sampler=sampler, **kwargs)

    def _pin_memory(self) -> bool:
        """Pinned batches copy to a GPU without waiting; a run on the CPU (``hw=cpu`` on a GPU machine too) would
        pin them for nothing, in one more thread per loader."""
        if self.trainer is None:  # a loader made outside a fit (a notebook, a test): by the machine
            return torch.cuda.is_available()
        return self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split)

    def teardown(self, stage: str) -> None:
        if self.device_decode is None or not self.device_decode.images:
            return
        readers = [t for d in self.datasets.values() if isinstance(t := getattr(d, "transform", None), ReadEncoded)]
        log.info(
            "data.decode=device: %d images decoded and augmented on the device (JPEGs by %s; %s decoded in the loader "
            "workers: not JPEG, or CMYK; %d corrupt JPEGs replaced)",
            self.device_decode.images,
            self.device_decode.decoder or "none",
            sum(r.num_host_decoded for r in readers),
            self.device_decode.num_skipped,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        if isinstance(x, EncodedBatch):  # data.decode=device: decode and augment here, on the device
            x = self.device_decode(x)  # type: ignore[misc]
        x = normalize(x, self.mean, self.std)
        if self.trainer is not None:
            # Lightning converts a batch to the run's precision before it reaches this hook, when the images are
            # still uint8; the normalised float32 images get it here (bf16 under bf16-true; 32-true: unchanged).
            x = self.trainer.precision_plugin.convert_input(x)
        # Training batches only (the trainer's stage is VALIDATING etc. otherwise); before Mixup/CutMix, which
        # the LightningModule applies in training_step, as in timm.
        if self.erasing is not None and self.trainer is not None and self.trainer.training:
            x = self.erasing(x)
        return x, y
