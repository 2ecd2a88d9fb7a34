"""Random erasing (Zhong et al. 2017, "Random Erasing Data Augmentation"), batched on the device.

The same distribution as timm's ``RandomErasing`` with one box per image (``max_count=1``, ``num_splits=0``),
which is how DeiT trains: each image, with probability ``prob``, gets one rectangle of area fraction
U(min_area, max_area) and log-uniform aspect ratio (height / width) overwritten; up to 10 draws are tried for a
box that fits inside the image, and an image with none that fits is left as it is. It runs on *normalised*
images, so that the fill (zeros, or standard normal values) has the statistics of the normalised data.

Every image's numbers are drawn at once from torch's global generator of the batch's device, a fixed count per
batch whatever the outcome: the run's seed decides them, ExactResume's saved generator states resume them,
and nothing waits on the device (no ``.item()``, no boolean indexing).
"""

from __future__ import annotations

import math

import torch

MODES = ("const", "rand", "pixel")
ATTEMPTS = 10  # timm's: draws tried per image for a box that fits


class RandomErasing:
    """Erase one random rectangle per image of a normalised batch, each image with probability ``prob``.

    Args:
        prob: Probability that an image is erased, in [0, 1] (DeiT: 0.25); 0 returns the batch unchanged.
        mode: The fill: "const" (zeros), "rand" (one standard normal value per image and channel), "pixel"
            (standard normal values per pixel and channel; DeiT's, and timm's train.py default).
        min_area: Smallest erased fraction of the image area.
        max_area: Largest erased fraction of the image area.
        min_aspect: Smallest aspect ratio (height / width) of the box.
        max_aspect: Largest aspect ratio; None is ``1 / min_aspect``.
    """

    def __init__(
        self,
        prob: float,
        mode: str = "pixel",
        min_area: float = 0.02,
        max_area: float = 1 / 3,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"random erasing prob must be in [0, 1], got {prob}; DeiT uses 0.25, 0 turns it off")
        if mode not in MODES:
            raise ValueError(
                f"unknown random erasing mode {mode!r}; use 'const' (zeros), 'rand' (one normal value per "
                "channel) or 'pixel' (normal values per pixel, DeiT's)"
            )
        if not 0 < min_area <= max_area <= 1:
            raise ValueError(
                f"random erasing areas must satisfy 0 < min_area <= max_area <= 1, got ({min_area}, {max_area}); "
                "the usual is (0.02, 1/3)"
            )
        if max_aspect is None:
            max_aspect = 1 / min_aspect if min_aspect > 0 else min_aspect  # the latter fails the check below
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(
                f"random erasing aspects must satisfy 0 < min_aspect <= max_aspect, got ({min_aspect}, "
                f"{max_aspect}); the usual is (0.3, 1/0.3)"
            )
        self.prob, self.mode = prob, mode
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def boxes(self, batch: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Draw the boxes of a batch: (top, left, box height, box width) per image, (B, 4) int64.

        An image that is not erased (probability ``1 - prob``, or no draw fitted) has an empty box (0 x 0).
        """
        erase = torch.rand(batch, device=device) < self.prob
        area = torch.empty(batch, ATTEMPTS, device=device).uniform_(self.min_area, self.max_area) * (height * width)
        aspect = torch.empty(batch, ATTEMPTS, device=device).uniform_(*self.log_aspect).exp_()
        # torch.round halves to even, as Python's round() in timm
        h = (area * aspect).sqrt_().round_().long()
        w = (area / aspect).sqrt_().round_().long()
        fits = (h < height) & (w < width)  # strict, as timm: a box never spans the whole image
        first = fits.int().argmax(dim=1, keepdim=True)  # the first draw that fits (0 where none does)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        erase &= fits.any(dim=1)
        h, w = h.where(erase, 0), w.where(erase, 0)
        # top uniform in [0, height - h], left in [0, width - w], both ends included (timm's randint)
        top = (torch.rand(batch, device=device) * (height - h + 1)).long().clamp_(max=height - h)
        left = (torch.rand(batch, device=device) * (width - w + 1)).long().clamp_(max=width - w)
        return torch.stack([top, left, h, w], dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Erase a normalised float batch (B, C, H, W); the input itself is never modified."""
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"random erasing expects normalised float images (B, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                "apply it after vit_exp.data.transforms.normalize"
            )
        if self.prob == 0:
            return x
        batch, channels, height, width = x.shape
        top, left, h, w = self.boxes(batch, height, width, x.device).unbind(1)
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
        mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
        if self.mode == "const":
            return x.masked_fill(mask, 0.0)
        # Drawn for every image, erased or not: a fixed count of numbers per batch (see the module docstring).
        shape = (batch, channels, height, width) if self.mode == "pixel" else (batch, channels, 1, 1)
        fill = torch.randn(shape, dtype=x.dtype, device=x.device)
        return torch.where(mask, fill, x)

    def __repr__(self) -> str:
        aspect = tuple(round(math.exp(a), 4) for a in self.log_aspect)
        return (
            f"{type(self).__name__}(prob={self.prob}, mode={self.mode!r}, "
            f"area=({self.min_area}, {self.max_area:.4g}), aspect={aspect})"
        )
