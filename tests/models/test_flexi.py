"""FlexiViT's pieces against timm: the PI-resize of the patch kernel, the position embedding on the new grid, and a
whole model's logits at another patch size; the default forward untouched; one compiled graph per patch size."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import timm_model
from vit_exp.models import create_model
from vit_exp.models.flexi import make_flexible, patch_sizes_of, resample_patch_embed
from vit_exp.models.layers import resample_pos_embed

timm_layers = pytest.importorskip("timm.layers")

RESIZES = [("bicubic", True), ("bilinear", False)]  # timm's default; big_vision's kernel resize (tf.image.resize)


@pytest.mark.parametrize(("interpolation", "antialias"), RESIZES)
@pytest.mark.parametrize("new", [8, 10, 15, 24, 32, 48])
def test_pi_resize_equals_timms_up_and_down(new: int, interpolation: str, antialias: bool) -> None:
    kernel = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(new))
    ours = resample_patch_embed(kernel, new, interpolation, antialias)
    theirs = timm_layers.resample_patch_embed(kernel, [new, new], interpolation, antialias)
    assert ours.shape == (8, 3, new, new)
    assert torch.equal(ours, theirs)


def test_pi_resize_keeps_the_tokens_of_a_resized_patch() -> None:
    """The rule's promise (FlexiViT eq. 3): upsampled patches meet the upsampled kernel as the originals met the
    original: <resize(x), w'> = <x, w>."""
    from vit_exp.models.flexi import resize_matrix

    w, x = torch.randn(4, 3, 8, 8, dtype=torch.float32), torch.randn(5, 3, 8, 8)
    w2 = resample_patch_embed(w, 12, "bilinear", False)
    x2 = (resize_matrix(8, 12, "bilinear", False) @ x.reshape(5, 3, 64, 1)).reshape(5, 3, 12, 12)
    torch.testing.assert_close(torch.einsum("dchw,nchw->nd", w2, x2), torch.einsum("dchw,nchw->nd", w, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("interpolation", "antialias"), RESIZES)
@pytest.mark.parametrize("grid", [5, 8, 15])
def test_position_embedding_on_a_new_grid_equals_timms(grid: int, interpolation: str, antialias: bool) -> None:
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 7 * 7, 32)
    ours = resample_pos_embed(pos, (grid, grid), 1, interpolation, antialias)
    theirs = resample_abs_pos_embed(pos, [grid, grid], num_prefix_tokens=1, interpolation=interpolation, antialias=antialias)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("patch", [8, 32])
def test_logits_at_another_patch_size_equal_timms(patch: int) -> None:
    """timm's ``set_input_size(patch_size=...)`` PI-resizes the kernel and resamples the position embedding (both
    bicubic, antialiased): the same model as ours run at that patch size, on the same weights."""
    theirs = timm_model("vit_tiny_patch16_224")
    ours = create_model("vit_tiny_patch16_224").eval()
    ours.load_state_dict(theirs.state_dict())
    make_flexible(ours, eval_patch_size=patch)
    theirs.set_input_size(patch_size=patch)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=2e-5, rtol=1e-4)


def _tiny() -> torch.nn.Module:
    return create_model("vit_test", patch_size=4, img_size=16, num_classes=10).eval()


def test_the_default_forward_has_no_resize(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    before = model(x)
    assert make_flexible(model) is model and patch_sizes_of(model) is None  # no model.flexi: nothing attached
    make_flexible(model, patch_sizes=[2, 4, 8])  # at its own size (4) between training steps: the same graph

    def no_resize(*args, **kwargs):
        raise AssertionError("resized at the stored patch size")

    monkeypatch.setattr(torch.nn.functional, "interpolate", no_resize)
    monkeypatch.setattr(torch.linalg, "pinv", no_resize)
    assert torch.equal(model(x), before)
    assert list(model.state_dict()) == list(_tiny().state_dict())  # nothing stored beside the weights


def test_runs_at_each_size_with_that_many_tokens() -> None:
    model, x = _tiny(), torch.randn(2, 3, 16, 16)
    make_flexible(model, patch_sizes=[2, 4, 8])
    sizes = patch_sizes_of(model)
    for p in (2, 8, 16):
        sizes.set(p)
        assert model.forward_features(x).shape == (2, 1 + (16 // p) ** 2, 32)
    sizes.set(2)
    model.double()  # the matrices follow the model's device and stay fp32; the kernel takes the model's dtype
    assert model(x.double()).dtype == torch.float64


def test_impossible_sizes_and_models_are_refused() -> None:
    with pytest.raises(ValueError, match="does not divide the resolution 16"):
        make_flexible(_tiny(), patch_sizes=[2, 3])
    hybrid = create_model("vit_base_r50", img_size=32, depth=1, embed_dim=32, num_heads=2, num_classes=2)
    with pytest.raises(ValueError, match="no patch kernel"):
        make_flexible(hybrid, patch_sizes=[8, 16])


BIG_VISION_SIZES = [8, 10, 12, 15, 16, 20, 24, 30, 40, 48]  # FlexiViT's at 240 px: more than dynamo's 8 graphs


def test_compile_makes_one_graph_per_patch_size() -> None:
    from torch._dynamo.testing import CompileCounter

    from vit_exp.compat import compiled_graphs_per_function

    torch._dynamo.reset()
    model = create_model("vit_test", patch_size=16, img_size=240, num_classes=10).eval()
    make_flexible(model, patch_sizes=BIG_VISION_SIZES)
    sizes, counter, x = patch_sizes_of(model), CompileCounter(), torch.randn(1, 3, 240, 240)
    compiled = torch.compile(model, backend=counter)
    limit = torch._dynamo.config.recompile_limit
    with torch.no_grad(), compiled_graphs_per_function(len(BIG_VISION_SIZES)):
        for p in BIG_VISION_SIZES + BIG_VISION_SIZES[::-1]:
            sizes.set(p)
            torch.testing.assert_close(compiled(x), model(x))
    assert counter.frame_count == len(BIG_VISION_SIZES)  # one graph per size, each compiled once
    assert torch._dynamo.config.recompile_limit == limit  # put back
    torch._dynamo.reset()
