"""What the sources do with an image that cannot be decoded: skip it and count it, or stop.

Shared by the folder, Hugging Face and shard sources so that the policy and its message are the same.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vit_exp.data.transforms import Transform, load_image, to_uint8_tensor

# What PIL raises for truncated, corrupt or non-image files (UnidentifiedImageError is an OSError).
BAD_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


class BadImages:
    """Skip-or-raise policy with a skip count shared by all DataLoader workers.

    The count lives in shared memory because each worker process holds its own copy of the dataset.
    It counts samples that had to be skipped, so a bad file read in three epochs counts three times.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._count = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def num_skipped(self) -> int:
        """Images skipped so far, over all workers."""
        return int(self._count)

    def skip(self, name: str, error: Exception, count: bool = True) -> None:
        """Record an unreadable image (count=False: already counted), or raise naming it when strict."""
        if self.strict:
            raise ValueError(
                f"cannot read image {name}: {error}; remove or replace the file, or set strict=False "
                "to skip unreadable images"
            ) from error
        if count:
            self._count += 1
        warnings.warn(f"skipping unreadable image {name}: {error}", stacklevel=3)


def decode(img: Image.Image, transform: Transform | None) -> torch.Tensor:
    """Apply the transform, or just decode to uint8 (3, H, W) when there is none."""
    return to_uint8_tensor(load_image(img)) if transform is None else transform(img)


class SkippingImageDataset(Dataset):
    """Map-style image dataset that replaces an unreadable image with the next readable one.

    Replacement policy: index i falls back to i+1, i+2, ... (wrapping), so the choice is deterministic
    and the epoch keeps its length, at the price of that neighbour appearing twice. Each replaced
    index counts once in `num_skipped`, so an epoch counts its bad files. Subclasses give
    `_read(i) -> (lazily opened image, target)` and `_name(i)` for messages.
    """

    def __init__(self, num_samples: int, transform: Transform | None, bad: BadImages) -> None:
        self.num_samples = num_samples
        self.transform = transform
        self.bad = bad

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_skipped(self) -> int:
        """Images skipped so far by this dataset's source, over all workers."""
        return self.bad.num_skipped

    def _read(self, index: int) -> tuple[Image.Image, Any]:
        raise NotImplementedError

    def _name(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        for offset in range(self.num_samples):
            i = (index + offset) % self.num_samples
            try:
                img, target = self._read(i)
                return decode(img, self.transform), target
            except BAD_IMAGE_ERRORS as error:
                self.bad.skip(self._name(i), error, count=offset == 0)
        raise ValueError("no image in this split can be read; check the files and their permissions")
