import numpy as np
import pytest
import torch

from vit_exp.attention import attention_rollout, cls_attention, draw_attention
from vit_exp.models import create_model

MODELS = [
    dict(name="vit_test", img_size=32),  # 8x8 grid, class token
    dict(name="vit_test", img_size=32, global_pool="avg", class_token=False),
    dict(name="vit_base_r50", img_size=64, depth=1),  # the hybrid: its grid is the CNN's 4x4 output
]


@pytest.mark.parametrize("kw", MODELS, ids=["cls", "gap", "hybrid"])
def test_maps_have_the_patch_grid_shape_and_sum_to_one(kw):
    torch.manual_seed(0)
    model = create_model(**kw).eval()
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    heads = model.blocks[-1].attn.num_heads
    per_head = cls_attention(model, x)
    rollout = attention_rollout(model, x)
    assert per_head.shape == (2, heads, *model.grid_size)
    assert rollout.shape == (2, *model.grid_size)
    torch.testing.assert_close(per_head.sum((-2, -1)), torch.ones(2, heads))
    torch.testing.assert_close(rollout.sum((-2, -1)), torch.ones(2))
    assert (per_head >= 0).all() and (rollout >= 0).all()


def test_rollout_of_one_layer_is_its_mixed_attention():
    """With one block, rollout = class-token row of 0.5 * mean-head attention + 0.5 * I, over the patches."""
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=32, depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    attn = model.forward_attention(x)[0].mean(1)[0]  # (T, T)
    row = (0.5 * attn + 0.5 * torch.eye(attn.shape[0]))[0, 1:]
    torch.testing.assert_close(attention_rollout(model, x)[0].flatten(), row / row.sum())


def test_attention_weights_reproduce_the_fused_forward():
    """forward_attention reports the weights the model actually uses: weights @ v gives the block output."""
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=32, depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    attn = model.blocks[0].attn
    tokens = model.blocks[0].norm1(model._pos_embed(model.patch_embed(x)))
    _, _, v = attn._qkv(tokens)
    manual = attn.proj((model.forward_attention(x)[0] @ v).transpose(1, 2).reshape(tokens.shape))
    torch.testing.assert_close(manual, attn(tokens))


def test_draw_attention_makes_a_figure(tmp_path):
    model = create_model("vit_test", img_size=32).eval()
    image = np.random.default_rng(0).random((32, 32, 3))
    maps = cls_attention(model, torch.randn(1, 3, 32, 32))[0]
    fig = draw_attention(image, maps, titles=[f"head {i}" for i in range(len(maps))])
    fig.savefig(tmp_path / "attn.png")
    assert len(fig.axes) == 1 + len(maps) and (tmp_path / "attn.png").stat().st_size > 0
