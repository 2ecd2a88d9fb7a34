"""The variant table: architectures as data, published weight files beside them, and their names.

Architectures follow Table 1 of Dosovitskiy et al. (2020) (ViT-B, L, H), timm's additions (Ti, S) and DeiT's
distilled models (Touvron et al. 2021: a distillation token and a second head, timm's ``deit_*_distilled``). A name is
a family plus patch size and resolution (``vit_base_patch16_384``); a published file is keyed by ``arch.tag``
as timm keys it (``vit_base_patch16_384.orig_in21k_ft_in1k``), with its file name, hash and the model card's
ImageNet top-1/top-5. Resolving a name into one model (``ModelSpec``) is ``vit_exp.models.spec``'s job.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the JAX-trained weights of the paper expect [-1, 1] inputs
INCEPTION_STD = (0.5, 0.5, 0.5)

JX_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
LEGACY_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

# Architecture families: VisionTransformer arguments (patch_size: the family's default patch).
FAMILIES: dict[str, dict[str, Any]] = {
    # For unit tests and small data (digits): seconds on a CPU.
    "vit_test": dict(embed_dim=32, depth=2, num_heads=2, patch_size=4),
    "vit_micro": dict(embed_dim=96, depth=4, num_heads=3, patch_size=4),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    # The original timm ViT-S/16 (trained by timm, not in the paper), kept exactly as its weights need:
    # no qkv bias, LayerNorm eps 1e-5, MLP ratio 3 and the attention scale of a single 768-wide head.
    "vit_small": dict(
        embed_dim=768, depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False, norm_eps=1e-5, attn_scale=768**-0.5
    ),
    # ViT-S/16 as trained today (DeiT, AugReg, big_vision's 90-epoch baseline): 22M parameters.
    "vit_small_augreg": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
    # R50+ViT-B/16: ResNet stages (3, 4, 9) give stride 16, so the "patch" is fixed at 16.
    "vit_base_r50": dict(embed_dim=768, depth=12, num_heads=12, hybrid_layers=(3, 4, 9)),
    # DeiT-Ti, S, B with the distillation token (Touvron et al. 2021, Table 1): ViT-Ti, S (AugReg's), B plus a
    # token and a head. Any other family takes it as an override too (model.distilled=true).
    "deit_tiny_distilled": dict(embed_dim=192, depth=12, num_heads=3, distilled=True),
    "deit_small_distilled": dict(embed_dim=384, depth=12, num_heads=6, distilled=True),
    "deit_base_distilled": dict(embed_dim=768, depth=12, num_heads=12, distilled=True),
}
HYBRID_STRIDE = 16
DEFAULT_PATCH, DEFAULT_RES = 16, 224

# Input normalisation by family: the legacy ViT-S/16 and DeiT were trained on ImageNet's statistics, the rest on
# [-1, 1].
FAMILY_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    family: (IMAGENET_MEAN, IMAGENET_STD)
    for family in ("vit_small", "deit_tiny_distilled", "deit_small_distilled", "deit_base_distilled")
}


def family_mean_std(family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return FAMILY_MEAN_STD.get(family, (INCEPTION_MEAN, INCEPTION_STD))


def eval_crop_pct(img_size: int) -> float:
    """The evaluation center crop at a resolution: 0.9 at the pretraining scale (224 up to 384); none below
    (small images) nor at the fine-tuning resolutions of the paper (384 and above), which are resized whole."""
    return 0.9 if 224 <= img_size < 384 else 1.0


@dataclass(frozen=True)
class Arch:
    """A registered architecture: a family at one patch size and resolution."""

    family: str
    patch_size: int
    img_size: int


@dataclass(frozen=True)
class Weights:
    """A published weight file: what it holds (``arch.tag``), where it is, and the model card's figures."""

    arch: str
    tag: str
    file: str  # its 8 hex digits start the file's SHA-256
    url: str
    top1: float | None = None  # published ImageNet-1k top-1 / top-5 (%)
    top5: float | None = None
    num_classes: int = 1000

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def sha256_prefix(self) -> str | None:
        m = re.search(r"-([0-9a-f]{8})\.[A-Za-z]+$", self.file)
        return m.group(1) if m else None


DEIT_RELEASE = "https://dl.fbaipublicfiles.com/deit/"
AUGREG_RELEASE = "https://storage.googleapis.com/vit_models/augreg/"


def _jx(arch: str, file: str, top1: float, top5: float) -> Weights:
    # timm's tag for the paper's ImageNet-21k pretrained, ImageNet-1k fine-tuned release
    return Weights(arch, "orig_in21k_ft_in1k", file, JX_RELEASE + file, top1, top5)


_WEIGHTS = [
    Weights("vit_small_patch16_224", "legacy_in1k", "vit_small_p16_224-15ec54c9.pth",
            LEGACY_RELEASE + "vit_small_p16_224-15ec54c9.pth", 77.85, 93.42),  # fmt: skip
    _jx("vit_base_patch16_224", "jx_vit_base_p16_224-80ecf9dd.pth", 81.78, 96.13),
    _jx("vit_base_patch16_384", "jx_vit_base_p16_384-83fb41ba.pth", 84.20, 97.22),
    _jx("vit_base_patch32_384", "jx_vit_base_p32_384-830016f5.pth", 81.66, 96.13),
    _jx("vit_base_resnet50_384", "jx_vit_base_resnet50_384-9fd3c705.pth", 84.99, 97.30),
    _jx("vit_large_patch16_224", "jx_vit_large_p16_224-4ee7a4dc.pth", 83.06, 96.44),
    _jx("vit_large_patch16_384", "jx_vit_large_p16_384-b3be5167.pth", 85.17, 97.36),
    # DeiT's distilled releases (facebookresearch/deit; timm's tag fb_in1k); top-1/top-5 as timm's
    # results-imagenet.csv measures them (the paper, Table 5: 74.5, 81.2, 83.4, 85.2).
    *(Weights(arch, "fb_in1k", file, DEIT_RELEASE + file, top1, top5) for arch, file, top1, top5 in [
        ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224-b40b3cf7.pth", 74.54, 91.90),
        ("deit_small_distilled_patch16_224", "deit_small_distilled_patch16_224-649709d9.pth", 81.20, 95.38),
        ("deit_base_distilled_patch16_224", "deit_base_distilled_patch16_224-df68dfff.pth", 83.38, 96.49),
        ("deit_base_distilled_patch16_384", "deit_base_distilled_patch16_384-d0272ac0.pth", 85.44, 97.33),
    ]),
    # "How to train your ViT" (Steiner et al. 2021): the recommended ImageNet-21k B/16, fine-tuned on ImageNet-1k at
    # 384 (lr 0.01, 20k steps; experiment=augreg_b16_i21k_to_i1k_384); timm's results-imagenet.csv: 86.01 / 98.00.
    Weights("vit_base_patch16_384", "augreg_in21k_ft_in1k",
            "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz",
            AUGREG_RELEASE + "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01"
            "-res_384.npz", 86.01, 98.00),
]
WEIGHTS: dict[str, Weights] = {w.name: w for w in _WEIGHTS}  # "arch.tag" -> file; the first of an arch is its default


def default_weights(arch: str) -> Weights | None:
    """The published file an architecture name stands for, if any."""
    return next((w for w in _WEIGHTS if w.arch == arch), None)


def variant_name(family: str, patch_size: int, img_size: int) -> str:
    """The canonical name of a family at a patch size and resolution (no validation)."""
    if "hybrid_layers" in FAMILIES.get(family, {}):
        return f"{family.replace('_r50', '_resnet50')}_{img_size}"
    return f"{family}_patch{patch_size}_{img_size}"


def _arch(family: str, patch: int, res: int) -> tuple[str, Arch]:
    return variant_name(family, patch, res), Arch(family, patch, res)


ARCHS: dict[str, Arch] = dict(
    [
        _arch("vit_small", 16, 224),
        _arch("vit_base", 16, 224),
        _arch("vit_base", 16, 384),
        _arch("vit_base", 32, 224),
        _arch("vit_base", 32, 384),
        _arch("vit_base_r50", 16, 224),
        _arch("vit_base_r50", 16, 384),
        _arch("vit_large", 16, 224),
        _arch("vit_large", 16, 384),
        _arch("vit_large", 32, 384),
        _arch("vit_huge", 14, 224),
        _arch("vit_tiny", 16, 224),
        _arch("vit_tiny", 16, 384),
        _arch("vit_small_augreg", 16, 224),
        _arch("vit_small_augreg", 16, 384),
        _arch("vit_test", 4, 32),
        _arch("vit_micro", 4, 32),
        _arch("deit_tiny_distilled", 16, 224),
        _arch("deit_small_distilled", 16, 224),
        _arch("deit_base_distilled", 16, 224),
        _arch("deit_base_distilled", 16, 384),
    ]
)


def resolve_name(family: str, patch_size: int, img_size: int) -> str:
    """Validate a family / patch / resolution triple and return its canonical variant name.

    Raises:
        ValueError: unknown family, a resolution that the patch does not divide, or a hybrid with a patch
            other than its backbone stride.
    """
    if family in ARCHS:
        family = ARCHS[family].family
    if family not in FAMILIES:
        raise ValueError(unknown_message(family))
    if "hybrid_layers" in FAMILIES[family] and patch_size != HYBRID_STRIDE:
        raise ValueError(
            f"{family} is a hybrid whose ResNet backbone has a fixed stride of {HYBRID_STRIDE}, so patch={patch_size} "
            f"is impossible; use patch={HYBRID_STRIDE} (or a plain ViT such as vit_base for patch {patch_size})"
        )
    if patch_size <= 0 or img_size <= 0 or img_size % patch_size:
        raise ValueError(
            f"resolution {img_size} is not divisible by patch size {patch_size}; "
            f"use a resolution that is a multiple of {patch_size} (e.g. {max(1, round(img_size / patch_size)) * patch_size})"
        )
    return variant_name(family, patch_size, img_size)


def unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(FAMILIES) + list(ARCHS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown model {name!r}.{hint} Families: {', '.join(FAMILIES)}; "
        f"list every registered name with vit_exp.models.list_models()"
    )


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style pattern, sorted."""
    return sorted(n for n in ARCHS if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published weight files as ``arch.tag`` names matching a shell-style pattern, sorted."""
    return sorted(n for n in WEIGHTS if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return list(FAMILIES)
