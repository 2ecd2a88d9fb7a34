"""Transforms: parity with timm's eval transform, draft-mode decoding, train augmentation, normalize."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vit_exp.data.transforms import (
    build_eval_transform,
    build_train_transform,
    load_image,
    normalize,
    open_image,
    parse_randaugment,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize(("img_size", "crop_pct"), [(224, 0.9), (384, 1.0)])
@pytest.mark.parametrize(("mean", "std"), [((0.5,) * 3, (0.5,) * 3), (IMAGENET_MEAN, IMAGENET_STD)])
def test_eval_transform_matches_timm(make_image, img_size, crop_pct, mean, std):
    from timm.data import create_transform

    img = make_image(300, 260, seed=1)
    reference = create_transform(
        input_size=(3, img_size, img_size),
        crop_pct=crop_pct,
        interpolation="bicubic",
        mean=mean,
        std=std,
        is_training=False,
    )(img)
    ours = build_eval_transform(img_size, crop_pct, "bicubic")(img)
    assert ours.dtype == torch.uint8 and ours.shape == (3, img_size, img_size)
    assert (normalize(ours[None], mean, std)[0] - reference).abs().max() < 1e-5


def test_eval_transform_of_a_lazily_opened_jpeg_equals_the_decoded_one(make_image, encode_jpeg):
    data = encode_jpeg(make_image(300, 260))
    transform = build_eval_transform(224, 0.875, "bicubic")
    assert torch.equal(transform(open_image(data)), transform(Image.open(io.BytesIO(data)).convert("RGB")))


def test_load_image_decodes_jpeg_at_reduced_scale_only_when_asked(make_image, encode_jpeg):
    data = encode_jpeg(make_image(800, 600))
    assert load_image(data).size == (800, 600)
    # 1/4 scale is the smallest that keeps both sides >= 100 (1/8 would give 100 x 75)
    assert load_image(data, 100).size == (200, 150)
    assert load_image(data, (100, 100)).mode == "RGB"


def test_load_image_converts_grayscale_and_png_to_rgb(make_image):
    out = io.BytesIO()
    make_image(40, 30).convert("L").save(out, "PNG")
    img = load_image(out.getvalue(), 10)  # draft is JPEG-only: a PNG decodes at full size
    assert img.mode == "RGB" and img.size == (40, 30)


def test_train_transform_draft_decode_matches_full_decode(make_image, encode_jpeg):
    """A whole-image crop of a 1600x1200 JPEG decodes at 1/4 scale and still looks the same."""
    data = encode_jpeg(make_image(1600, 1200, seed=2))
    transform = build_train_transform(224, scale=(1.0, 1.0), hflip=0.0)
    transform.ratio = (4 / 3, 4 / 3)  # the crop is then exactly the whole image
    lazy = open_image(data)
    ours = transform(lazy)
    assert lazy.size == (400, 300)  # draft decoded 1/4 of each side: the box still has >= 224 px per side
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    diff = (ours.float() - torch.from_numpy(np.array(full)).permute(2, 0, 1).float()).abs()
    assert diff.mean() < 3.0


def test_train_transform_is_seeded_and_flips(make_image):
    img = make_image(64, 48)
    no_flip = build_train_transform(32, scale=(1.0, 1.0), hflip=0.0)
    flip = build_train_transform(32, scale=(1.0, 1.0), hflip=1.0)
    torch.manual_seed(0)
    a = no_flip(img)
    torch.manual_seed(0)
    assert torch.equal(no_flip(img), a)
    torch.manual_seed(0)
    assert torch.equal(flip(img), a.flip(-1))
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)


def test_train_transform_random_crops_differ_and_resize_crop_keeps_shorter_side(make_image):
    img = make_image(64, 48)
    inception = build_train_transform(32, hflip=0.0)
    assert not torch.equal(inception(img), inception(img))
    resize_crop = build_train_transform(48, crop="resize_crop", hflip=0.0)
    out = resize_crop(img)  # shorter side 48 -> 48: a pure 48x48 crop of the original pixels
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert any(torch.equal(out, pixels[:, :, x : x + 48]) for x in range(17))


def test_randaugment_setting():
    assert parse_randaugment("rand-m10-n2") == (2, 10)
    assert parse_randaugment("rand-m9") == (2, 9)
    assert parse_randaugment((3, 7)) == (3, 7)
    with pytest.raises(ValueError, match="mstd"):
        parse_randaugment("rand-m9-mstd0.5")
    with pytest.raises(ValueError, match="rand-m10-n2"):
        parse_randaugment("auto-m9")


def test_train_transform_with_randaugment_returns_uint8(make_image):
    transform = build_train_transform(32, randaugment="rand-m10-n2")
    assert transform.randaugment.num_ops == 2 and transform.randaugment.magnitude == 10
    out = transform(make_image())
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def test_normalize_matches_the_float_formula():
    x = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: normalize(torch.zeros(1, 3, 2, 2), (0.5,) * 3, (0.5,) * 3), "uint8"),
        (lambda: normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (0.5,), (0.5,)), "one value per channel"),
        (lambda: build_eval_transform(224, 1.2, "bicubic"), "crop_pct"),
        (lambda: build_eval_transform(224, 0.9, "cubic"), "interpolation"),
        (lambda: build_train_transform(224, crop="center"), "crop"),
        (lambda: build_train_transform(224, scale=(0.5, 0.1)), "scale"),
    ],
)
def test_user_errors_name_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()
