"""The Vision Transformer (Dosovitskiy et al., 2020), parameter-compatible with timm's ``VisionTransformer``.

Read top to bottom: embed patches, prepend the class token (and DeiT's distillation token), add position
embeddings, run the encoder blocks, normalise, pool, (optionally) the pre-logits layer, classify. Torch only.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vit_exp.models.layers import Block, PatchEmbed
from vit_exp.models.resnet import HybridEmbed

Logits = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # a distilled model in training: (class, distillation)


class VisionTransformer(nn.Module):
    """ViT classifier.

    Args:
        img_size: Input resolution (square).
        patch_size: Patch side; ignored by the hybrid, whose backbone stride (16) takes its place.
        in_chans: Input channels.
        num_classes: Classes of the head; 0 gives a model with no head (``forward`` returns features).
        embed_dim: Token width D.
        depth: Encoder blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width / D.
        qkv_bias: Bias on the qkv projection.
        norm_eps: LayerNorm epsilon (1e-6 for the JAX-trained weights, 1e-5 for the legacy ViT-S/16).
        attn_scale: Attention logit scale; None means head_dim ** -0.5.
        class_token: Prepend a learned class token.
        global_pool: "token" (class token) or "avg" (mean of the patch tokens, after the final norm).
        representation_size: Width of the pre-logits layer (dense + tanh) of the paper's pretraining head;
            None for no such layer.
        drop_rate: Dropout after the position embedding, in the blocks and before the head.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth, rising linearly to this value over the blocks.
        hybrid_layers: ResNet stages of a hybrid patch embedding, e.g. (3, 4, 9); None for pixel patches.
        head_bias_init: Initial head bias (-10 for sigmoid multi-label pretraining, as big_vision does).
        distilled: DeiT's distillation token and second head (``head_dist``), as timm's
            ``VisionTransformerDistilled``: in training with ``distilled_training`` set, ``forward`` returns
            (class-head logits, distillation-head logits); otherwise their mean.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        attn_scale: float | None = None,
        class_token: bool = True,
        global_pool: str = "token",
        representation_size: int | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        hybrid_layers: Sequence[int] | None = None,
        head_bias_init: float = 0.0,
        distilled: bool = False,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")
        if distilled and (global_pool != "token" or representation_size):
            raise ValueError(
                "distilled=True reads the class and distillation tokens: use global_pool='token', no "
                "representation_size"
            )
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = embed_dim
        self.num_prefix_tokens = (1 if class_token else 0) + (1 if distilled else 0)
        self.grad_checkpointing = False
        self.distilled_training = False  # set_distilled_training(True): training returns both heads' logits

        if hybrid_layers:
            self.patch_embed: nn.Module = HybridEmbed(img_size, in_chans, embed_dim, hybrid_layers)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_layer, attn_scale)
                for i in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)

        if representation_size:
            self.pre_logits: nn.Module = nn.Sequential(
                OrderedDict(fc=nn.Linear(embed_dim, representation_size), act=nn.Tanh())
            )
            self.num_features = representation_size
        else:
            self.pre_logits = nn.Identity()
            self.num_features = embed_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head_bias_init = head_bias_init
        self.head: nn.Module = nn.Identity()
        self.head_dist: nn.Module | None = nn.Identity() if distilled else None
        self.reset_classifier(num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)  # timm's VisionTransformerDistilled
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("head"):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and the distillation head) with a fresh one for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)
        if self.head_dist is not None:
            self.head_dist = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.constant_(head.bias, self.head_bias_init)
        return head

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training returns (class logits, distillation logits) for a distillation loss (a distilled model only)."""
        if self.dist_token is None:
            raise ValueError("set_distilled_training needs a distilled model (distilled=True: a deit_*_distilled)")
        self.distilled_training = enable

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, ~30% more compute."""
        self.grad_checkpointing = enable

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def no_weight_decay(self) -> set[str]:
        """Parameters that must not be decayed although they are not biases or norms."""
        return {"pos_embed", "cls_token", "dist_token"}

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos_embed = self.pos_embed
        if x.shape[1] != self.patch_embed.num_patches:  # FlexiViT at another patch size: resampled to its grid
            pos_embed = self.patch_embed.flexi.pos_embed(pos_embed, self.num_prefix_tokens)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], dim=1)
        return self.pos_drop(x + pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) to normalised tokens (B, prefix + N, D)."""
        x = self._pos_embed(self.patch_embed(x))
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    @torch.no_grad()
    def forward_attention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block, each (B, heads, T, T) with T = prefix + patches.

        For attention maps and rollout (``vit_exp.attention``); it recomputes q and k, so it is not a
        training path.
        """
        x = self._pos_embed(self.patch_embed(x))
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.norm1(x)))
            x = block(x)
        return maps

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) to one vector per image (B, D)."""
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Logits:
        """Tokens to logits (B, num_classes), or to the pre-logit features (B, num_features).

        A distilled model averages its two heads, except in training with ``distilled_training`` set: then the
        pair (class head, distillation head), for DeiT's loss.
        """
        if self.head_dist is not None:
            cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)
            return (cls, dist) if self.distilled_training and self.training else (cls + dist) / 2
        x = self.pre_logits(self.pool(x))
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> Logits:
        return self.forward_head(self.forward_features(x))
