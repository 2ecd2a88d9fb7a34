"""Image decoding and transforms. Images stay uint8 (3, H, W) until they reach the device.

Keeping uint8 on the CPU side makes each sample 4x smaller to collate and to send from the loader
workers than a float tensor, and moves normalisation onto the accelerator (`normalize`).

Transforms take a PIL image. Datasets hand them a *lazily opened* file (header read, pixels not yet
decoded) so that a transform that knows how many pixels it needs can let libjpeg decode the JPEG at
1/2, 1/4 or 1/8 scale (`PIL.Image.draft`); an already decoded image works the same, only slower.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as F2

from vit_exp.rules import INTERPOLATIONS as FILTERS

Transform = Callable[[Image.Image], torch.Tensor]

# PIL's filters by the names data.interpolation takes (vit_exp.rules checks them without importing torchvision)
INTERPOLATIONS = {name: InterpolationMode[name.upper()] for name in FILTERS}


def open_image(src: str | Path | bytes | BinaryIO) -> Image.Image:
    """Open an image lazily: only the header is read, pixels are decoded on first use.

    Args:
        src: A file path, the encoded bytes, or a binary file object.

    Returns:
        The PIL image, not yet decoded.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(src)
    return Image.open(src)


def load_image(
    src: str | Path | bytes | BinaryIO | Image.Image,
    target_size: int | tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an image to RGB, at a reduced scale when the target is much smaller than the file.

    With `target_size`, a JPEG is decoded by libjpeg at the largest of 1/2, 1/4, 1/8 scale that keeps
    both sides >= the target (draft mode): far less work than decoding every pixel and resizing.

    Args:
        src: A path, encoded bytes, a binary file object, or a lazily opened PIL image.
        target_size: Smallest acceptable (width, height), or one int for both; None decodes at full size.

    Returns:
        The decoded RGB image.
    """
    img = src if isinstance(src, Image.Image) else open_image(src)
    if target_size is not None and img.format == "JPEG":
        size = (target_size, target_size) if isinstance(target_size, int) else target_size
        img.draft("RGB", size)  # no-op once the pixels are decoded
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> uint8 tensor (3, H, W)."""
    return TF.pil_to_tensor(img)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale uint8 images to [0, 1] and normalise per channel; run it on the device.

    The arithmetic is the same as torchvision's ToTensor + Normalize, so the result matches a float
    CPU pipeline (and timm's eval transform) to float rounding.

    Args:
        x: uint8 images (..., 3, H, W).
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.

    Returns:
        float32 tensor of the same shape.
    """
    if x.dtype != torch.uint8:
        raise ValueError(
            f"normalize expects uint8 images, got {x.dtype}; the transforms return uint8, so normalise "
            "each batch exactly once (already-normalised floats must not be normalised again)"
        )
    if len(mean) != x.shape[-3] or len(std) != x.shape[-3]:
        raise ValueError(f"mean {list(mean)} and std {list(std)} need one value per channel ({x.shape[-3]})")
    mean_t, std_t = _channel_constants(tuple(mean), tuple(std), x.device)
    return x.float().div_(255).sub_(mean_t).div_(std_t)


@functools.lru_cache(maxsize=32)
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """``normalize``'s (C, 1, 1) mean and std on ``device``, made once: a tensor made from Python numbers for a GPU
    is a copy from pageable host memory, which waits for the device's queue, on every batch if made per batch.
    Ordinary tensors even when first asked for under ``torch.inference_mode`` (a validation), so that training's
    batches may use them."""
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for v in (mean, std))


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
    return interpolation


def parse_randaugment(spec: str | tuple[int, int]) -> tuple[int, int]:
    """Parse a RandAugment setting into (num_ops, magnitude).

    Args:
        spec: timm-style "rand-m10-n2" (magnitude 10, 2 ops; n defaults to 2), or (num_ops, magnitude).

    Returns:
        (num_ops, magnitude).
    """
    if not isinstance(spec, str):
        num_ops, magnitude = spec
        return int(num_ops), int(magnitude)
    parts = spec.split("-")
    values = {"n": 2, "m": None}
    for part in parts[1:]:
        match = re.fullmatch(r"([mn])(\d+)", part)
        if not match:
            raise ValueError(
                f"unsupported RandAugment option {part!r} in {spec!r}; write 'rand-m<magnitude>-n<num_ops>' "
                "(timm's mstd/inc/mmax options are not supported by torchvision's RandAugment)"
            )
        values[match.group(1)] = int(match.group(2))
    if parts[0] != "rand" or values["m"] is None:
        raise ValueError(f"bad RandAugment setting {spec!r}; write e.g. 'rand-m10-n2'")
    return values["n"], values["m"]


class EvalTransform:
    """Resize the shorter side to ``floor(img_size / crop_pct)``, center-crop ``img_size``; returns uint8 (3, S, S).

    A class (not a closure) so that it pickles: loader workers and torch_xla's multiprocess launch send it to
    other processes.
    """

    def __init__(self, img_size: int, crop_pct: float, interpolation: str, draft: bool = False) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}; e.g. 0.875 for 224 or 1.0 for 384")
        self.scale_size = math.floor(img_size / crop_pct)
        self.resize = T.Resize(self.scale_size, interpolation=INTERPOLATIONS[_check_interpolation(interpolation)])
        self.crop = T.CenterCrop(img_size)
        self.draft = draft

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = load_image(img, self.scale_size if self.draft else None)
        return to_uint8_tensor(self.crop(self.resize(img)))


def build_eval_transform(img_size: int, crop_pct: float, interpolation: str, draft: bool = False) -> Transform:
    """Resize the shorter side to floor(img_size / crop_pct), center-crop img_size, return uint8.

    Pixel-equal to timm's eval transform for the same metadata once `normalize` is applied.

    Args:
        img_size: Output height and width.
        crop_pct: Fraction of the resized image kept by the center crop, in (0, 1].
        interpolation: Resize filter, e.g. "bicubic".
        draft: Decode large JPEGs at reduced scale (faster, but no longer pixel-equal to timm).

    Returns:
        A callable PIL image -> uint8 tensor (3, img_size, img_size) (an ``EvalTransform``).
    """
    return EvalTransform(img_size, crop_pct, interpolation, draft)


class TrainTransform:
    """Random crop, horizontal flip and optional RandAugment on a PIL image; returns uint8 (3, S, S).

    The crop box is chosen from the image header first; a JPEG is then decoded at the smallest
    1/2^k scale at which the box still has at least S pixels per side, so only decode work is saved,
    never source pixels. The box is resized as a uint8 tensor by torch's antialiased kernel, which
    matches PIL's filter to ~0.02 grey levels on average at 2-3x its speed.
    """

    def __init__(
        self,
        img_size: int,
        interpolation: str = "bicubic",
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        randaugment: str | tuple[int, int] | None = None,
        crop: str = "inception",
    ) -> None:
        if crop not in ("inception", "resize_crop"):
            raise ValueError(
                f"unknown crop {crop!r}; use 'inception' (random-resized crop) or 'resize_crop' "
                "(shorter side to img_size, then a random img_size crop)"
            )
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}; the usual is (0.08, 1.0)")
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"training interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.img_size = img_size
        self.interpolation = INTERPOLATIONS[interpolation]
        self.scale, self.ratio, self.hflip, self.crop = scale, ratio, hflip, crop
        self.randaugment = None
        if randaugment:
            num_ops, magnitude = parse_randaugment(randaugment)
            # tensor rotate/shear support nearest and bilinear only
            self.randaugment = T.RandAugment(
                num_ops=num_ops, magnitude=magnitude, interpolation=InterpolationMode.BILINEAR
            )

    def draw(self, width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
        """This image's random parameters, from torch's RNG: ((left, top, box_width, box_height), flip).

        The one place they are drawn, in this order, for host decoding (``__call__``) and for device decoding
        (``vit_exp.data.device_decode``, which draws them in the loader worker and sends them with the bytes), so
        that both see the same crop and flip for the same sample seed.
        """
        box = self._crop_box(width, height)
        return box, bool(self.hflip and torch.rand(()) < self.hflip)

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, box_width, box_height) in source pixels, drawn from torch's RNG."""
        if self.crop == "inception":
            # get_params only reads the size, so a stand-in tensor avoids decoding the image.
            top, left, h, w = T.RandomResizedCrop.get_params(
                torch.empty(0, height, width), list(self.scale), list(self.ratio)
            )
            return left, top, w, h
        side = min(width, height)  # the whole shorter side becomes img_size pixels
        top = int(torch.randint(0, height - side + 1, ()).item())
        left = int(torch.randint(0, width - side + 1, ()).item())
        return left, top, side, side

    def __call__(self, img: Image.Image) -> torch.Tensor:
        width, height = img.size
        (left, top, w, h), flip = self.draw(width, height)
        # Decode only as many pixels as the crop needs: the box must keep >= img_size pixels per side.
        factor = min(w, h) / self.img_size
        img = load_image(img, (math.ceil(width / factor), math.ceil(height / factor)) if factor >= 2 else None)
        sx, sy = img.size[0] / width, img.size[1] / height
        box = (round(left * sx), round(top * sy), round((left + w) * sx), round((top + h) * sy))
        x = to_uint8_tensor(img.crop(box))
        # v2's resize keeps uint8 (v1 casts to float and is ~4x slower)
        x = F2.resize(x, [self.img_size, self.img_size], self.interpolation, antialias=True)
        if flip:
            x = x.flip(-1)
        if self.randaugment is not None:
            x = self.randaugment(x)
        return x.contiguous()  # resize keeps the (H, W, 3) memory order of the PIL pixels


def build_train_transform(
    img_size: int,
    interpolation: str = "bicubic",
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    randaugment: str | tuple[int, int] | None = None,
    crop: str = "inception",
) -> Transform:
    """Training augmentation: random crop, flip, optional RandAugment; output uint8 (3, S, S).

    Args:
        img_size: Output height and width.
        interpolation: Resize filter, e.g. "bicubic".
        scale: Area fraction range of the inception (random-resized) crop.
        hflip: Probability of a horizontal flip.
        randaugment: "rand-m10-n2" or (num_ops, magnitude); None disables it.
        crop: "inception" (random-resized crop) or "resize_crop" (shorter side to img_size, random crop).

    Returns:
        A callable PIL image -> uint8 tensor (3, img_size, img_size).
    """
    return TrainTransform(img_size, interpolation, tuple(scale), hflip=hflip, randaugment=randaugment, crop=crop)
