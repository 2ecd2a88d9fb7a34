"""ModelSpec: one resolution of a model config. Model identity is not weight identity: published metadata
attaches only to the published architecture, preprocessing follows family and resolution, and an overridden
architecture is named for what it is."""

from __future__ import annotations

import pickle

import pytest
import torch

from vit_exp.models import ModelSpec, create_model, get_pretrained_cfg, resolve_pretrained_cfg, resolve_spec
from vit_exp.models.variants import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN


def meta_model(*args, **kwargs):
    with torch.device("meta"):  # shapes only
        return create_model(*args, **kwargs)


def test_a_published_name_at_another_resolution_is_not_the_published_file():
    model = meta_model("vit_base_patch16_224", img_size=384)  # the 224 weights, position embedding resampled
    cfg = model.pretrained_cfg
    assert model.variant_name == "vit_base_patch16_384"  # the architecture it is
    assert (cfg.file, cfg.url, cfg.top1, cfg.top5) == (None, None, None, None)  # not the 384 file's 84.20%
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0  # the 384 resolution's preprocessing
    assert model.spec.weights is None
    # The published architectures themselves, by name, by family triple or by arch.tag, keep their file.
    for spec in (resolve_spec("vit_base_patch16_384"), resolve_spec("vit_base", 16, 384),
                 resolve_spec("vit_base_patch16_384.orig_in21k_ft_in1k")):  # fmt: skip
        assert spec.weights.file == "jx_vit_base_p16_384-83fb41ba.pth" and spec.pretrained_cfg.top1 == 84.20
        assert spec.weights.sha256_prefix == "83fb41ba"


def test_a_published_file_of_another_architecture_is_not_the_specs_weights():
    """``model=vit_base res=384 model.pretrained=<the 224 file>``: the 224 weights resampled, not the 384 file."""
    from vit_exp.models.spec import with_weights_file

    spec = resolve_spec("vit_base", 16, 384)
    assert with_weights_file(spec, "/w/jx_vit_base_p16_224-80ecf9dd.pth").weights is None
    assert with_weights_file(spec, "/w/jx_vit_base_p16_384-83fb41ba.pth") == spec
    assert with_weights_file(spec, "/w/ViT-B_16-384.npz") == spec  # the same weights in Google's format, say


@pytest.mark.parametrize(
    "family, res, mean, crop",
    [
        ("vit_small", 384, IMAGENET_MEAN, 1.0),  # the legacy ViT-S/16 was trained on ImageNet statistics
        ("vit_small", 224, IMAGENET_MEAN, 0.9),
        ("vit_base", 384, INCEPTION_MEAN, 1.0),
        ("vit_base", 224, INCEPTION_MEAN, 0.9),
        ("vit_base", 256, INCEPTION_MEAN, 0.9),
        ("vit_tiny", 384, INCEPTION_MEAN, 1.0),
        ("vit_large", 512, INCEPTION_MEAN, 1.0),
        ("vit_micro", 16, INCEPTION_MEAN, 1.0),  # small images are not cropped
    ],
)
def test_preprocessing_follows_family_and_resolution(family, res, mean, crop):
    cfg = resolve_pretrained_cfg(family, None, res)
    assert (cfg.mean, cfg.crop_pct, cfg.interpolation, cfg.input_size) == (mean, crop, "bicubic", (3, res, res))
    assert get_pretrained_cfg(family, res) == cfg
    if family == "vit_small":
        assert cfg.std == IMAGENET_STD


def test_an_overridden_architecture_is_named_for_what_it_is():
    model = create_model("vit_base", patch_size=16, img_size=32, depth=1, embed_dim=32, num_heads=4)
    assert model.variant_name == model.spec.arch == "vit_base_patch16_32-d1w32h4"
    spec = resolve_spec("vit_test", 4, 32, global_pool="avg", class_token=False, representation_size=48)
    assert spec.arch == "vit_test_patch4_32-r48-nocls-gap"
    assert resolve_spec("vit_test", 4, 32, num_heads=2, mlp_ratio=4.0).arch == "vit_test_patch4_32"  # the family's own
    assert resolve_spec("vit_base", 16, 224, mlp_ratio=2.5).arch == "vit_base_patch16_224-mlp2p5"


def test_weights_attach_only_to_the_exact_published_architecture_and_head():
    assert resolve_spec("vit_small_patch16_224").weights.top1 == 77.85
    assert resolve_spec("vit_small_patch16_224", depth=1).weights is None  # one block is not the file
    assert resolve_spec("vit_base_patch16_384", num_classes=10).weights is None  # nor a 10-class head
    assert resolve_spec("vit_base_patch16_384", num_classes=10).pretrained_cfg.top1 is None
    # Regularisation and initialisation do not change what the weights are.
    spec = resolve_spec("vit_base_patch16_384", drop_path_rate=0.1, head_bias_init=-10.0)
    assert spec.arch == "vit_base_patch16_384" and spec.weights.top1 == 84.20
    assert spec.kwargs["drop_path_rate"] == 0.1


def test_create_model_builds_the_spec():
    spec = resolve_spec("vit_test", img_size=16, num_classes=10, drop_path_rate=0.1)
    assert isinstance(spec, ModelSpec) and pickle.loads(pickle.dumps(spec)) == spec
    model = create_model(spec)
    assert model.spec == spec and model.pretrained_cfg == spec.pretrained_cfg and model.num_classes == 10
    assert create_model("vit_test", img_size=16, num_classes=10, drop_path_rate=0.1).spec == spec
    assert model.blocks[-1].drop_path1.p == pytest.approx(0.1)
    torch.manual_seed(0)
    a = create_model(spec).state_dict()
    torch.manual_seed(0)
    b = create_model("vit_test", img_size=16, num_classes=10, drop_path_rate=0.1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same initialisation either way
    with pytest.raises(ValueError, match="a ModelSpec is complete: pass \\['num_classes'\\] to resolve_spec"):
        create_model(spec, num_classes=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="vit_base_patch16_384.augreg"), "no published weights 'vit_base_patch16_384.augreg'; "
         "vit_base_patch16_384 has vit_base_patch16_384.orig_in21k_ft_in1k"),
        (dict(name="vit_test", dropout=0.1), "unknown model override"),
        (dict(name="vit_base", patch_size=16, img_size=100), "not divisible by patch size 16"),
        (dict(name="vit_bsae"), "Did you mean vit_base"),
    ],
)
def test_impossible_specs_say_what_would_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_spec(**kwargs)


def test_every_published_file_is_keyed_by_arch_and_tag():
    from vit_exp.models import list_pretrained

    names = list_pretrained()
    assert len(names) == 12 and "vit_small_patch16_224.legacy_in1k" in names
    for name in names:
        spec = resolve_spec(name)
        assert spec.arch == name.split(".")[0] and spec.weights.name == name and spec.weights.url.endswith(spec.weights.file)
