"""The ResNet-V2 stem and stages of the R50+ViT-B/16 hybrid (paper, section 3.1 "Hybrid Architecture").

Not pre-activation despite the "V2" name: BiT-style weight-standardised convs, GroupNorm(32) and
TF "SAME" padding, three stages (3, 4, 9) of bottlenecks for an output stride of 16. Parameter names
follow timm's ``ResNetV2`` so that the published hybrid checkpoint loads as it is. Torch only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vit_exp.models.layers import check_input_size


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) for one spatial dimension; the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor so that a ``kernel``/``stride`` op gives ceil(size / stride) outputs."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


class StdConv2dSame(nn.Conv2d):
    """Conv2d with weight standardisation (per output channel) and TF 'SAME' padding, no bias."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, eps: float = 1e-8) -> None:
        # Stride-1 odd kernels pad symmetrically, so the static padding of nn.Conv2d is exact there.
        self.dynamic_pad = stride > 1
        super().__init__(
            in_chs, out_chs, kernel_size, stride=stride, padding=0 if self.dynamic_pad else kernel_size // 2, bias=False
        )
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        w = self.weight
        # batch_norm over (1, out, fan_in) normalises each filter with its biased variance, as BiT does.
        w = F.batch_norm(w.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps)
        return F.conv2d(x, w.reshape_as(self.weight), None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5) optionally followed by ReLU."""

    def __init__(self, num_channels: int, act: bool = True, num_groups: int = 32) -> None:
        super().__init__(num_groups, num_channels, eps=1e-5)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class Downsample(nn.Module):
    """Projection shortcut: 1x1 conv (strided) and GroupNorm without activation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_chs, out_chs, 1, stride=stride)
        self.norm = GroupNormAct(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck (1x1, 3x3 strided, 1x1), width out/4, ReLU after the residual sum."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, downsample: bool) -> None:
        super().__init__()
        mid = out_chs // 4
        self.downsample = Downsample(in_chs, out_chs, stride) if downsample else None
        self.conv1 = StdConv2dSame(in_chs, mid, 1)
        self.norm1 = GroupNormAct(mid)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride=stride)
        self.norm2 = GroupNormAct(mid)
        self.conv3 = StdConv2dSame(mid, out_chs, 1)
        self.norm3 = GroupNormAct(out_chs, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class Stage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Bottleneck(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, i == 0) for i in range(depth)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class MaxPoolSame(nn.Module):
    """3x3/2 max pool with TF 'SAME' padding (padded with -inf, so the pad never wins)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class ResNetStem(nn.Sequential):
    def __init__(self, in_chans: int, out_chs: int = 64) -> None:
        super().__init__()
        self.conv = StdConv2dSame(in_chans, out_chs, 7, stride=2)
        self.norm = GroupNormAct(out_chs)
        self.pool = MaxPoolSame()


class ResNetBackbone(nn.Module):
    """Stem (stride 4) and bottleneck stages; stage i > 0 halves the resolution.

    Args:
        layers: Blocks per stage; (3, 4, 9) is the R50 of the hybrid (stride 16, 1024 channels out).
        in_chans: Input channels.
        widths: Output channels of each stage.
    """

    def __init__(
        self, layers: Sequence[int] = (3, 4, 9), in_chans: int = 3, widths: Sequence[int] = (256, 512, 1024, 2048)
    ) -> None:
        super().__init__()
        self.stem = ResNetStem(in_chans)
        chs = [64] + list(widths[: len(layers)])
        self.stages = nn.Sequential(
            *[Stage(chs[i], chs[i + 1], depth, 1 if i == 0 else 2) for i, depth in enumerate(layers)]
        )
        self.num_features = chs[-1]
        self.reduction = 4 * 2 ** (len(layers) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class HybridEmbed(nn.Module):
    """CNN feature map to tokens: backbone, then a 1x1 conv projection to the ViT width.

    Exposes the same attributes as ``PatchEmbed`` (``grid_size``, ``num_patches``, ``proj``), with the
    backbone's output stride in the role of the patch size.
    """

    def __init__(self, img_size: int, in_chans: int, embed_dim: int, layers: Sequence[int] = (3, 4, 9)) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(layers, in_chans)
        self.patch_size = self.backbone.reduction
        if img_size % self.patch_size:
            raise ValueError(
                f"image size {img_size} is not divisible by the hybrid backbone's stride {self.patch_size}; "
                f"pick a resolution that is a multiple of {self.patch_size}"
            )
        self.img_size = img_size
        self.grid_size = (img_size // self.patch_size, img_size // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(self.backbone.num_features, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.img_size)
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2)  # (B, N, D)
