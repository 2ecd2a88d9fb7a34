"""Builders of timm reference models (timm is a test-only oracle) and of Google-layout .npz files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")


def timm_model(name: str, **kwargs) -> nn.Module:
    """timm's build of one of our variant names, with random weights.

    timm no longer builds the legacy ViT-S/16 (its ``vit_small_patch16_224`` is now the 22M DeiT/AugReg
    model), so that one is assembled from timm's ``VisionTransformer`` with the published definition: no qkv
    bias, MLP ratio 3, depth 8, 8 heads, ``nn.LayerNorm`` (eps 1e-5), and the attention scale ``768 ** -0.5``
    that its weights were trained with: timm's fused path cannot take a scale, so the explicit path is used
    with ``scale`` patched on every attention module.
    """
    from timm.models.vision_transformer import VisionTransformer

    if name == "vit_small_patch16_224":
        m = VisionTransformer(
            patch_size=16, embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False, norm_layer=nn.LayerNorm, **kwargs
        )
        for blk in m.blocks:
            blk.attn.fused_attn = False
            blk.attn.scale = 768**-0.5
        return m.eval()
    timm_names = {"vit_base_resnet50_384": "vit_base_r50_s16_384", "vit_small_augreg_patch16_224": "vit_small_patch16_224"}
    return timm.create_model(timm_names.get(name, name), pretrained=False, **kwargs).eval()


def to_google_npz(
    sd: dict[str, torch.Tensor], depth: int, heads: int, big_vision: bool = False, hybrid_stages=()) -> dict[str, np.ndarray]:
    """Write a timm state dict in Google's Flax layout (the inverse of the published conversion).

    Independent of vit_exp's reader: a test loads the result with timm's own ``.npz`` loader too.
    """
    p = "params/" if big_vision else ""
    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)

    def k(t):  # torch -> flax kernel
        a = t.detach().numpy()
        return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T

    w = {
        f"{p}embedding/kernel": k(sd["patch_embed.proj.weight"]),
        f"{p}embedding/bias": sd["patch_embed.proj.bias"].numpy(),
        f"{p}cls": sd["cls_token"].numpy(),
        (f"{p}pos_embedding" if big_vision else f"{p}Transformer/posembed_input/pos_embedding"): sd["pos_embed"].numpy(),
        f"{p}Transformer/encoder_norm/scale": sd["norm.weight"].numpy(),
        f"{p}Transformer/encoder_norm/bias": sd["norm.bias"].numpy(),
        f"{p}head/kernel": k(sd["head.weight"]),
        f"{p}head/bias": sd["head.bias"].numpy(),
    }
    for i in range(depth):
        s, b = f"blocks.{i}.", f"{p}Transformer/encoderblock_{i}/"
        a = f"{b}MultiHeadDotProductAttention_{mha}/"
        dim = sd[s + "norm1.weight"].shape[0]
        hd = dim // heads
        qkv_w = sd[s + "attn.qkv.weight"].numpy().reshape(3, dim, dim)
        qkv_b = sd[s + "attn.qkv.bias"].numpy().reshape(3, heads, hd)
        for j, n in enumerate(("query", "key", "value")):
            w[f"{a}{n}/kernel"] = qkv_w[j].T.reshape(dim, heads, hd)
            w[f"{a}{n}/bias"] = qkv_b[j]
        w[f"{a}out/kernel"] = sd[s + "attn.proj.weight"].numpy().T.reshape(heads, hd, dim)
        w[f"{a}out/bias"] = sd[s + "attn.proj.bias"].numpy()
        w[f"{b}LayerNorm_0/scale"], w[f"{b}LayerNorm_0/bias"] = sd[s + "norm1.weight"].numpy(), sd[s + "norm1.bias"].numpy()
        w[f"{b}LayerNorm_{ln2}/scale"], w[f"{b}LayerNorm_{ln2}/bias"] = sd[s + "norm2.weight"].numpy(), sd[s + "norm2.bias"].numpy()
        for r in range(2):
            w[f"{b}MlpBlock_{mlp}/Dense_{r}/kernel"] = k(sd[s + f"mlp.fc{r + 1}.weight"])
            w[f"{b}MlpBlock_{mlp}/Dense_{r}/bias"] = sd[s + f"mlp.fc{r + 1}.bias"].numpy()
    if hybrid_stages:
        bb = "patch_embed.backbone."
        w[f"{p}conv_root/kernel"] = k(sd[bb + "stem.conv.weight"])
        w[f"{p}gn_root/scale"], w[f"{p}gn_root/bias"] = sd[bb + "stem.norm.weight"].numpy(), sd[bb + "stem.norm.bias"].numpy()
        for si, depth_s in enumerate(hybrid_stages):
            for u in range(depth_s):
                src, dst = f"{bb}stages.{si}.blocks.{u}.", f"{p}block{si + 1}/unit{u + 1}/"
                pairs = [(f"conv{r}", f"norm{r}", f"conv{r}", f"gn{r}") for r in (1, 2, 3)]
                if u == 0:
                    pairs.append(("downsample.conv", "downsample.norm", "conv_proj", "gn_proj"))
                for conv, norm, conv_dst, gn_dst in pairs:
                    w[dst + conv_dst + "/kernel"] = k(sd[src + conv + ".weight"])
                    w[dst + gn_dst + "/scale"] = sd[src + norm + ".weight"].numpy()
                    w[dst + gn_dst + "/bias"] = sd[src + norm + ".bias"].numpy()
    return w
