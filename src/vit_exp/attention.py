"""What a ViT looks at: last-layer class-token attention per head, and attention rollout.

Rollout follows Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers": average the heads,
add the identity for the residual connection, renormalise the rows, and multiply the layers' matrices
from the first to the last. Works for every model of ``vit_exp.models`` (the hybrid's tokens are its CNN
grid cells). Maps come back over the patch grid, normalised to sum to one per image (and head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from vit_exp.models.vit import VisionTransformer

if TYPE_CHECKING:
    import matplotlib.figure
    import numpy as np


def _query_row(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Attention from the class token (or, without one, the mean over tokens) to the patch tokens."""
    row = attn[..., 0, :] if num_prefix_tokens else attn.mean(dim=-2)
    patches = row[..., num_prefix_tokens:]
    return patches / patches.sum(dim=-1, keepdim=True)


def _to_grid(maps: torch.Tensor, model: VisionTransformer) -> torch.Tensor:
    return maps.reshape(*maps.shape[:-1], *model.grid_size)


def cls_attention(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Last block's class-token attention over the patches, per head: (B, heads, grid_h, grid_w)."""
    last = model.forward_attention(images)[-1]
    return _to_grid(_query_row(last, model.num_prefix_tokens), model)


def attention_rollout(model: VisionTransformer, images: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout over all blocks: (B, grid_h, grid_w).

    Args:
        model: Any ViT of ``vit_exp.models``.
        images: Normalised inputs (B, C, H, W).
        residual: Weight of the identity (the skip connection) mixed into each layer's attention.
    """
    rollout = None
    for attn in model.forward_attention(images):
        a = attn.mean(dim=1)  # (B, T, T): heads fused by their mean
        a = (1 - residual) * a + residual * torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return _to_grid(_query_row(rollout, model.num_prefix_tokens), model)


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Patch-grid maps (..., gh, gw) to pixel resolution (..., size, size), bilinear."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=(size, size), mode="bilinear")
    return out.reshape(*lead, size, size)


def draw_attention(
    image: "np.ndarray", maps: torch.Tensor, titles: list[str] | None = None, alpha: float = 0.6
) -> "matplotlib.figure.Figure":
    """Draw maps over an image: the image, then one panel per map (e.g. rollout, or each head).

    Args:
        image: (H, W, 3) uint8 or float in [0, 1], the image as the model saw it (after resize and crop).
        maps: (gh, gw) or (n, gh, gw) maps of one image.
        titles: One title per map.
        alpha: Opacity of the heat map.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    maps = maps.detach().cpu()
    maps = maps[None] if maps.ndim == 2 else maps
    heat = upsample(maps, image.shape[0])
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3 * (len(maps) + 1), 3), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input")
    for i, ax in enumerate(axes[0, 1:]):
        ax.imshow(image)
        ax.imshow(heat[i].numpy(), cmap="inferno", alpha=alpha)
        ax.set_title(titles[i] if titles else f"map {i}")
    for ax in axes[0]:
        ax.axis("off")
    fig.tight_layout()
    return fig
