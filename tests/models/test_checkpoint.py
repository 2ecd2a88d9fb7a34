"""Checkpoint loading and numerical parity with timm (the reference implementation) on the same weights."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.models.conftest import timm_model, to_google_npz
from vit_exp.models import create_model

SEVEN = [
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
    "vit_base_patch32_384",
    "vit_base_resnet50_384",
    "vit_large_patch16_224",
    pytest.param("vit_large_patch16_384", marks=pytest.mark.slow),  # ~200 GFLOPs a forward, twice
]


def assert_same_logits(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert (ours - ref).abs().max().item() <= 1e-4
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("name", SEVEN)
def test_timm_state_dict_gives_timm_logits(name, tmp_path):
    torch.manual_seed(0)
    ref = timm_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model(name, pretrained=path).eval()
    x = torch.randn(2, *ours.pretrained_cfg.input_size)
    with torch.inference_mode():
        assert_same_logits(ours(x), ref(x))


def test_legacy_linear_patch_projection(tmp_path):
    """The published ViT-S/16 predates conv patchification: its patch projection is a (768, 768) matrix."""
    torch.manual_seed(0)
    ref = create_model("vit_small_patch16_224", depth=1).eval()
    sd = ref.state_dict()
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"].flatten(1)
    torch.save(sd, tmp_path / "legacy.pth")
    ours = create_model("vit_small_patch16_224", depth=1, pretrained=tmp_path / "legacy.pth").eval()
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("big_vision", [False, True], ids=["google_research", "big_vision"])
def test_npz_matches_timms_npz_loader(big_vision, tmp_path):
    from timm.models.vision_transformer import _load_weights

    torch.manual_seed(0)
    src = timm_model("vit_base_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
    path = tmp_path / "ViT-test.npz"
    np.savez(path, **to_google_npz(src.state_dict(), depth=2, heads=12, big_vision=big_vision))
    ref = timm_model("vit_base_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
    _load_weights(ref, str(path))
    ours = create_model("vit_base", img_size=32, patch_size=8, depth=2, num_classes=10, pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert_same_logits(ref(x), src(x))  # the writer is right: timm reads back the original model
        assert_same_logits(ours(x), ref(x))


def test_hybrid_npz_matches_timms_npz_loader(tmp_path):
    from timm.models.vision_transformer import _load_weights

    torch.manual_seed(0)
    kw = dict(img_size=64, depth=1, num_classes=10)
    src = timm_model("vit_base_resnet50_384", **kw)
    with torch.no_grad():  # GroupNorm affine params start at 1/0; randomise so that a swap would show
        for n, p in src.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / "R50+ViT-B_16.npz"
    np.savez(path, **to_google_npz(src.state_dict(), depth=1, heads=12, hybrid_stages=(3, 4, 9)))
    ref = timm_model("vit_base_resnet50_384", **kw)
    _load_weights(ref, str(path))
    ours = create_model("vit_base_r50", pretrained=path, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert_same_logits(ref(x), src(x))
        assert_same_logits(ours(x), ref(x))


def test_pos_embed_resampling_224_to_384_equals_timm(tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    torch.manual_seed(0)
    src = timm_model("vit_base_patch16_224", depth=1)
    torch.save(src.state_dict(), tmp_path / "b16_224.pth")
    ref = timm_model("vit_base_patch16_384", depth=1)
    ref.load_state_dict(checkpoint_filter_fn(src.state_dict(), ref))
    ours = create_model("vit_base_patch16_224", img_size=384, depth=1, pretrained=tmp_path / "b16_224.pth").eval()
    assert ours.pos_embed.shape == (1, 577, 768)
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed, atol=0, rtol=0)
    x = torch.randn(1, 3, 384, 384)
    with torch.inference_mode():
        assert_same_logits(ours(x), ref(x))


def test_safetensors_and_lightning_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = create_model("vit_test", img_size=32, num_classes=10).eval()
    save_file(ref.state_dict(), tmp_path / "m.safetensors")
    # What Lightning writes for a module holding the backbone as `model`, compiled.
    ckpt = {"epoch": 3, "state_dict": {f"model._orig_mod.{k}": v for k, v in ref.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    x = torch.randn(2, 3, 32, 32)
    for file in ("m.safetensors", "last.ckpt"):
        ours = create_model("vit_test", img_size=32, num_classes=10, pretrained=tmp_path / file).eval()
        torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)


def test_other_num_classes_drops_the_head_with_a_warning(tmp_path):
    ref = create_model("vit_test", img_size=32, num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    with pytest.warns(UserWarning, match=r"head \(1000, 32\) does not fit the model's \(10, 32\) \(10 classes\)"):
        ours = create_model("vit_test", img_size=32, num_classes=10, pretrained=tmp_path / "m.pth")
    torch.testing.assert_close(ours.blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)
    assert ours.head.weight.shape == (10, 32)


def test_a_checkpoint_that_does_not_fit_lists_the_keys(tmp_path):
    torch.save(create_model("vit_test", img_size=32, depth=3).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=r"does not fit(.|\n)*not in model: blocks\.2\.norm1\.weight \(32,\)"):
        create_model("vit_test", img_size=32, depth=2, pretrained=tmp_path / "deeper.pth")
    torch.save(create_model("vit_test", img_size=32, embed_dim=48).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(ValueError, match=r"shape cls_token: checkpoint \(1, 1, 48\) vs model \(1, 1, 32\)"):
        create_model("vit_test", img_size=32, pretrained=tmp_path / "wider.pth")


def test_published_file_names_are_hash_checked(tmp_path):
    sd = create_model("vit_test", img_size=32).state_dict()
    tmp = tmp_path / "tmp.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    good = tmp.rename(tmp_path / f"jx_vit_test-{digest}.pth")
    create_model("vit_test", img_size=32, pretrained=good)
    bad = tmp_path / f"jx_vit_test-{'0' if digest[0] != '0' else '1'}{digest[1:]}.pth"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="damaged or not the published file"):
        create_model("vit_test", img_size=32, pretrained=bad)


def test_missing_and_unsafe_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("vit_test", pretrained=tmp_path / "nope.pth")
    torch.save({"state_dict": create_model("vit_test").state_dict(), "cfg": object()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        create_model("vit_test", pretrained=tmp_path / "pickled.pth")


def test_a_directory_is_no_published_format(tmp_path):
    """Sharded (FSDP) directories are a run's checkpoints: vit_exp.checkpoints reads them (tests/scale/test_sharded_read.py)."""
    (tmp_path / "last.ckpt").mkdir()
    with pytest.raises(ValueError, match="is a directory.*vit_exp.checkpoints.load_weights"):
        create_model("vit_test", pretrained=tmp_path / "last.ckpt")
