"""Transformer building blocks of the ViT: patch embedding, attention, MLP, block.

Parameter names follow timm's ``VisionTransformer`` so that its state dicts load without renaming.
Torch only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Image to patch tokens: a conv with kernel = stride = patch size.

    ``flexi`` (FlexiViT, ``vit_exp.models.flexi.make_flexible``) runs it at another patch size: the stored kernel
    PI-resized to that size. None (the default) runs the stored kernel as it is.

    Args:
        img_size: Input resolution (square).
        patch_size: Patch side in pixels; must divide ``img_size``.
        in_chans: Input channels.
        embed_dim: Token width.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"image size {img_size} is not divisible by patch size {patch_size}; "
                f"pick a resolution that is a multiple of {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.flexi: nn.Module | None = None  # a vit_exp.models.flexi.PatchSizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.img_size)
        if self.flexi is None or self.flexi.patch_size == self.patch_size:
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        p = self.flexi.patch_size
        return F.conv2d(x, self.flexi.kernel(self.proj.weight), self.proj.bias, stride=p).flatten(2).transpose(1, 2)


def check_input_size(x: torch.Tensor, img_size: int) -> None:
    # Traced away by torch.compile (static shapes), so the check costs nothing in the hot loop.
    if x.shape[-2:] != (img_size, img_size):
        raise ValueError(
            f"input is {tuple(x.shape[-2:])} but the model was built for {img_size}x{img_size}; "
            f"resize the input or create the model with img_size={x.shape[-1]}"
        )


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        dim: Token width.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Bias on the qkv projection (False in the legacy ViT-S/16 only).
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.
        scale: Logit scale; ``head_dim ** -0.5`` unless given (the legacy ViT-S/16 used ``768 ** -0.5``).
        fused: Use ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels); the explicit
            path is kept as the readable reference and for returning attention maps.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        scale: float | None = None,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale if scale is not None else self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)  # each (B, H, N, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        if self.fused:
            x = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
            )
        else:
            x = self.attn_drop(self.attention_map(q, k)) @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    def attention_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights (B, H, N, N) of the reference path."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, H, N, N) for tokens ``x`` (already normalised), for inspection."""
        q, k, _ = self._qkv(x)
        return self.attention_map(q, k)


class Mlp(nn.Module):
    """Two-layer MLP with GELU, as in the Transformer block of the paper."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm Transformer encoder block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, scale=attn_scale)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resample a (1, prefix + H*W, D) position embedding to a new patch grid.

    The prefix (class token) entries are kept; the grid part is interpolated in fp32. The defaults match
    timm's ``.pth`` loading (bicubic, antialias); Google's ``.npz`` loader uses bilinear, no antialias.

    Args:
        pos_embed: Position embedding of the checkpoint; its grid is assumed square.
        new_grid: Target (rows, cols).
        num_prefix_tokens: Leading tokens that have no grid position.
        interpolation: ``F.interpolate`` mode.
        antialias: Passed to ``F.interpolate``.

    Returns:
        The position embedding for ``new_grid``, in the input's dtype.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding has {grid.shape[1]} grid tokens, not a square grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode=interpolation, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
