"""RandomErasing: one box per image within its bounds, fills as specified, timm's statistics, the run's seed."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from vit_exp.data.erasing import MODES, RandomErasing

H, W = 40, 56  # not square, so that a swapped height and width would show
BACKGROUND = 100.0  # a value no fill takes (zeros, or standard normal draws)


def _images(n: int) -> torch.Tensor:
    return torch.full((n, 3, H, W), BACKGROUND)


def _boxes(out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mask (N, H, W), rows erased (N,), columns erased (N,), top, left) of images erased on a BACKGROUND."""
    mask = (out != BACKGROUND).any(1)
    rows, cols = mask.any(2), mask.any(1)
    top, left = rows.int().argmax(1), cols.int().argmax(1)
    return mask, rows.sum(1), cols.sum(1), top, left


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    v = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, v, "right") / len(a) - np.searchsorted(b, v, "right") / len(b)).max())


def _timm(prob: float, mode: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    timm_erasing = pytest.importorskip("timm.data.random_erasing")
    random.seed(seed)  # timm draws the boxes from Python's generator and the fills from torch's
    torch.manual_seed(seed)
    # timm's defaults: area (0.02, 1/3), aspect (0.3, 1/0.3), one box, no clean split; in place
    return timm_erasing.RandomErasing(prob, mode=mode, device="cpu")(x)


def _ours(prob: float, mode: str, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return RandomErasing(prob, mode=mode)(x)


@pytest.mark.parametrize("mode", MODES)
def test_prob_zero_is_identity(mode: str) -> None:
    x = torch.randn(4, 3, H, W)
    assert torch.equal(RandomErasing(0.0, mode=mode)(x.clone()), x)


@pytest.mark.parametrize("mode", MODES)
def test_prob_one_erases_one_box_per_image_within_bounds(mode: str) -> None:
    torch.manual_seed(0)
    x = _images(2000)
    out = RandomErasing(1.0, mode=mode)(x)
    assert torch.equal(x, _images(2000)), "the input must not be modified"
    mask, h, w, top, left = _boxes(out)
    rows = torch.arange(H)[None] - top[:, None]
    cols = torch.arange(W)[None] - left[:, None]
    rect = ((rows >= 0) & (rows < h[:, None]))[:, :, None] & ((cols >= 0) & (cols < w[:, None]))[:, None, :]
    assert torch.equal(mask, rect), "every image has exactly one solid rectangle erased"
    assert (h > 0).all() and (h < H).all() and (w > 0).all() and (w < W).all()
    # h and w are sqrt(area * aspect) and sqrt(area / aspect) rounded to the nearest pixel: within half a pixel
    h, w, area = h.double(), w.double(), H * W
    assert ((h + 0.5) * (w + 0.5) >= 0.02 * area).all() and ((h - 0.5) * (w - 0.5) <= area / 3).all()
    assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 1 / 0.3).all()
    # the box reaches every edge of the image in some draws: positions are uniform over [0, H - h] x [0, W - w]
    assert (top == 0).any() and (top + h == H).any() and (left == 0).any() and (left + w == W).any()


def test_fills_as_specified() -> None:
    torch.manual_seed(0)
    x = _images(2000)
    const = RandomErasing(1.0, mode="const")(x)
    assert (const[const != BACKGROUND] == 0).all()

    rand = RandomErasing(1.0, mode="rand")(x)
    mask = (rand != BACKGROUND).all(1)  # (N, H, W): every channel is filled
    assert torch.equal(mask, (rand != BACKGROUND).any(1))
    colour = rand.amin(dim=(2, 3))  # (N, C): the box's value per channel (BACKGROUND is larger)
    box = torch.where(mask[:, None], rand, colour[..., None, None])
    assert torch.equal(box, colour[..., None, None].expand_as(box)), "one value per image and channel"
    assert abs(colour.mean().item()) < 0.05 and abs(colour.std().item() - 1) < 0.05
    assert (colour[:, 0] != colour[:, 1]).all()

    pixel = RandomErasing(1.0, mode="pixel")(x)
    erased = pixel != BACKGROUND
    values = pixel[erased]
    assert abs(values.mean().item()) < 0.01 and abs(values.std().item() - 1) < 0.01
    lowest = pixel.where(erased, math.inf).amin(dim=(2, 3))  # (N, C)
    highest = pixel.where(erased, -math.inf).amax(dim=(2, 3))
    assert (lowest < highest).all(), "values vary inside every box, in every channel"


def test_box_statistics_match_timm() -> None:
    """Erased fraction, aspect and position over 4,000 draws: the distributions agree with timm's.

    Measured: mean erased fraction 0.1716 (timm) and 0.1731 (ours); KS statistics 0.015 (fraction), 0.012
    (log aspect), 0.014 (top), 0.012 (left). Simulated mistakes fail: sides rounded down instead of to the
    nearest pixel shift the mean by -0.008, a log-uniform area by -0.06; a uniform aspect gives a KS of 0.28.
    """
    n = 4000
    theirs = _boxes(_timm(1.0, "const", _images(n), seed=0))
    ours = _boxes(_ours(1.0, "const", _images(n), seed=1))
    (_, h_t, w_t, top_t, left_t), (_, h_o, w_o, top_o, left_o) = theirs, ours
    frac_t, frac_o = (h_t * w_t / (H * W)).numpy(), (h_o * w_o / (H * W)).numpy()
    assert abs(frac_o.mean() - frac_t.mean()) < 0.005  # standard error of the difference: 0.002
    assert abs(frac_o.std() - frac_t.std()) < 0.005
    # 99.9% critical value of the KS statistic for two samples of 4,000: 1.95 * sqrt(2 / 4000) = 0.044
    assert _ks(frac_o, frac_t) < 0.044
    assert _ks(torch.log(h_o / w_o).numpy(), torch.log(h_t / w_t).numpy()) < 0.044
    assert _ks(top_o.numpy(), top_t.numpy()) < 0.044 and _ks(left_o.numpy(), left_t.numpy()) < 0.044


@pytest.mark.parametrize("mode", ["rand", "pixel"])
def test_fill_statistics_match_timm(mode: str) -> None:
    n = 2000
    theirs, ours = _timm(0.5, mode, _images(n), seed=0), _ours(0.5, mode, _images(n), seed=1)
    erased_t, erased_o = (theirs != BACKGROUND).flatten(1).any(1), (ours != BACKGROUND).flatten(1).any(1)
    assert abs(erased_o.float().mean() - erased_t.float().mean()) < 0.05  # 0.5 each; standard error 0.016
    if mode == "rand":  # one value per image and channel
        fill_t, fill_o = theirs[erased_t].amin(dim=(2, 3)), ours[erased_o].amin(dim=(2, 3))
    else:
        fill_t, fill_o = theirs[theirs != BACKGROUND], ours[ours != BACKGROUND]
    assert abs(fill_o.mean() - fill_t.mean()) < 0.05 and abs(fill_o.std() - fill_t.std()) < 0.05
    # measured KS: 0.022 (rand, ~3,000 values each), 0.015 (pixel, 4,000 of ~1.1 M values each)
    sample = torch.randperm(min(len(fill_t.flatten()), len(fill_o.flatten())))[:4000]
    assert _ks(fill_o.flatten()[sample].numpy(), fill_t.flatten()[sample].numpy()) < 0.044


def test_probability_matches_timm() -> None:
    n = 4000
    erased_t = (_timm(0.25, "const", _images(n), seed=0) == 0).flatten(1).any(1).float().mean().item()
    erased_o = (_ours(0.25, "const", _images(n), seed=1) == 0).flatten(1).any(1).float().mean().item()
    # standard error of a proportion 0.25 over 4,000 images: 0.007
    assert abs(erased_t - 0.25) < 0.025 and abs(erased_o - 0.25) < 0.025


def test_follows_the_global_seed() -> None:
    x = torch.randn(8, 3, H, W)
    erasing = RandomErasing(1.0, mode="pixel")
    torch.manual_seed(3)
    first = erasing(x)
    torch.manual_seed(3)
    assert torch.equal(erasing(x), first)
    assert not torch.equal(erasing(x), first)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prob": 1.5}, r"prob must be in \[0, 1\]"),
        ({"prob": -0.1}, r"prob must be in \[0, 1\]"),
        ({"prob": 0.25, "mode": "zeros"}, "use 'const'"),
        ({"prob": 0.25, "min_area": 0.5, "max_area": 0.1}, "min_area <= max_area"),
        ({"prob": 0.25, "min_aspect": 0.0}, "min_aspect <= max_aspect"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomErasing(**kwargs)


def test_uint8_images_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="after vit_exp.data.transforms.normalize"):
        RandomErasing(0.5)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_aspect_defaults_to_the_inverse_of_min_aspect() -> None:
    assert RandomErasing(0.5).log_aspect == pytest.approx((math.log(0.3), math.log(1 / 0.3)))
