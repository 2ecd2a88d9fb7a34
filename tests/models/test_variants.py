"""The variant table: published parameter counts, metadata, names and the errors users can cause."""

from __future__ import annotations

import pytest
import torch

from vit_exp.models import create_model, get_pretrained_cfg, list_models, resolve_name

# Parameter counts with a 1000-class head, in millions to 0.01M: the timm model card for the seven, timm's
# registry for the rest (Ti/16 5.72M, DeiT/AugReg S/16 22.05M, H/14 632.05M).
PUBLISHED_PARAMS = {
    "vit_small_patch16_224": 48.75,
    "vit_base_patch16_224": 86.57,
    "vit_base_patch16_384": 86.86,
    "vit_base_patch32_384": 88.30,
    "vit_base_resnet50_384": 98.95,
    "vit_large_patch16_224": 304.33,
    "vit_large_patch16_384": 304.72,
    "vit_tiny_patch16_224": 5.72,
    "vit_small_augreg_patch16_224": 22.05,
    "vit_huge_patch14_224": 632.05,
}
MODEL_CARD = {  # name: (file, top1, top5, crop_pct, mean)
    "vit_small_patch16_224": ("vit_small_p16_224-15ec54c9.pth", 77.85, 93.42, 0.9, (0.485, 0.456, 0.406)),
    "vit_base_patch16_224": ("jx_vit_base_p16_224-80ecf9dd.pth", 81.78, 96.13, 0.9, (0.5, 0.5, 0.5)),
    "vit_base_patch16_384": ("jx_vit_base_p16_384-83fb41ba.pth", 84.20, 97.22, 1.0, (0.5, 0.5, 0.5)),
    "vit_base_patch32_384": ("jx_vit_base_p32_384-830016f5.pth", 81.66, 96.13, 1.0, (0.5, 0.5, 0.5)),
    "vit_base_resnet50_384": ("jx_vit_base_resnet50_384-9fd3c705.pth", 84.99, 97.30, 1.0, (0.5, 0.5, 0.5)),
    "vit_large_patch16_224": ("jx_vit_large_p16_224-4ee7a4dc.pth", 83.06, 96.44, 0.9, (0.5, 0.5, 0.5)),
    "vit_large_patch16_384": ("jx_vit_large_p16_384-b3be5167.pth", 85.17, 97.36, 1.0, (0.5, 0.5, 0.5)),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_count(name):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = create_model(name)
    assert round(n_params(model) / 1e6, 2) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(MODEL_CARD))
def test_model_card_metadata(name):
    file, top1, top5, crop, mean = MODEL_CARD[name]
    cfg = get_pretrained_cfg(name)
    assert (cfg.file, cfg.top1, cfg.top5, cfg.crop_pct, cfg.mean) == (file, top1, top5, crop, mean)
    assert cfg.interpolation == "bicubic"
    assert cfg.url.endswith(file)
    assert cfg.input_size == (3, int(name[-3:]), int(name[-3:]))


@pytest.mark.parametrize("name", list_models())
def test_every_variant_trains_at_tiny_size(name):
    """Forward and backward at a tiny resolution and depth: finite, with a gradient on every parameter."""
    patch = 16 if "resnet" in name else 4
    model = create_model(name, num_classes=5, img_size=32, depth=1, patch_size=patch)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad


def test_family_patch_res_compose_to_published_names():
    assert resolve_name("vit_base", 16, 384) == "vit_base_patch16_384"
    assert resolve_name("vit_base", 32, 384) == "vit_base_patch32_384"
    assert resolve_name("vit_large", 16, 224) == "vit_large_patch16_224"
    assert resolve_name("vit_base_r50", 16, 384) == "vit_base_resnet50_384"
    with torch.device("meta"):  # the published architecture, whole: no depth override, which would rename it
        model = create_model("vit_base", patch_size=32, img_size=384)
    assert model.variant_name == "vit_base_patch32_384"
    assert model.pretrained_cfg.file == "jx_vit_base_p32_384-830016f5.pth"


@pytest.mark.parametrize(
    "args, match",
    [
        (("vit_base", 16, 100), "not divisible by patch size 16"),
        (("vit_base_r50", 32, 384), "fixed stride of 16"),
        (("vit_bsae", 16, 224), "unknown model 'vit_bsae'.*Did you mean vit_base"),
    ],
)
def test_impossible_combinations_are_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        resolve_name(*args)


def test_unknown_override_and_input_size_errors():
    with pytest.raises(ValueError, match="unknown model override"):
        create_model("vit_test", num_heads=2, dropout=0.1)
    model = create_model("vit_test", img_size=32)
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_overrides_change_the_architecture():
    m = create_model("vit_test", img_size=32, global_pool="avg", class_token=False, representation_size=48, num_classes=7)
    assert m.cls_token is None and m.pos_embed.shape[1] == 64
    assert m.num_features == 48 and isinstance(m.pre_logits.act, torch.nn.Tanh)
    assert m.forward_head(m.forward_features(torch.randn(2, 3, 32, 32)), pre_logits=True).shape == (2, 48)
    m = create_model("vit_test", img_size=32, drop_path_rate=0.2, head_bias_init=-10.0, num_classes=3)
    assert m.blocks[-1].drop_path1.p == pytest.approx(0.2) and m.blocks[0].drop_path1.p == 0.0
    assert torch.all(m.head.bias == -10.0)


def test_fused_and_reference_attention_agree():
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=32, num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    fused = model(x)
    for blk in model.blocks:
        blk.attn.fused = False
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=32, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, r in zip((p.grad for p in model.parameters()), ref):
        torch.testing.assert_close(g, r)


def test_compiles_without_graph_breaks():
    model = create_model("vit_test", img_size=32, num_classes=10)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    hybrid = create_model("vit_base_r50", img_size=32, depth=1, num_classes=10)
    assert torch._dynamo.explain(hybrid)(torch.randn(1, 3, 32, 32)).graph_break_count == 0


@pytest.mark.parametrize("name, patch, res", [("vit_base", 32, 384), ("vit_test", 4, 16), ("vit_base_patch16_224", None, 384)])
def test_resolve_pretrained_cfg_is_what_create_model_attaches(name, patch, res):
    from vit_exp.models import resolve_pretrained_cfg

    kw = {"patch_size": patch} if patch else {}
    with torch.device("meta"):
        model = create_model(name, img_size=res, **kw)
    assert resolve_pretrained_cfg(name, patch, res) == model.pretrained_cfg
