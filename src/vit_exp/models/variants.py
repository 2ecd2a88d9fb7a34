"""The variant table: architectures as data, published metadata beside them, and ``create_model``.

Architectures follow Table 1 of Dosovitskiy et al. (2020) (ViT-B, L, H) and timm's additions (Ti, S);
pretrained metadata (file names, preprocessing, ImageNet top-1/top-5) is the timm model card's.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit_exp.models.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the JAX-trained weights of the paper expect [-1, 1] inputs
INCEPTION_STD = (0.5, 0.5, 0.5)

JX_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
LEGACY_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"

# Architecture families. A model name is a family plus patch size and resolution: vit_base_patch16_384.
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
}
HYBRID_STRIDE = 16


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything about a variant that is not architecture: preprocessing and published weights."""

    name: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    num_classes: int = 1000
    file: str | None = None  # published file name; its 8 hex digits start the file's SHA-256
    url: str | None = None
    top1: float | None = None  # published ImageNet-1k top-1 / top-5 (%), from the model card
    top5: float | None = None

    @property
    def img_size(self) -> int:
        return self.input_size[-1]


@dataclass(frozen=True)
class Variant:
    family: str
    patch_size: int
    img_size: int
    cfg: PretrainedCfg


def _jx(name: str, family: str, patch: int, res: int, file: str, top1: float, top5: float) -> Variant:
    crop = 0.9 if res == 224 else 1.0
    cfg = PretrainedCfg(name, (3, res, res), crop_pct=crop, file=file, url=JX_RELEASE + file, top1=top1, top5=top5)
    return Variant(family, patch, res, cfg)


def _plain(name: str, family: str, patch: int, res: int, **cfg: Any) -> Variant:
    cfg.setdefault("crop_pct", 0.9 if res == 224 else 1.0)
    return Variant(family, patch, res, PretrainedCfg(name, (3, res, res), **cfg))


_VARIANTS: list[Variant] = [
    # The model card's seven.
    Variant(
        "vit_small",
        16,
        224,
        PretrainedCfg(
            "vit_small_patch16_224",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            file="vit_small_p16_224-15ec54c9.pth",
            url=LEGACY_RELEASE + "vit_small_p16_224-15ec54c9.pth",
            top1=77.85,
            top5=93.42,
        ),
    ),
    _jx("vit_base_patch16_224", "vit_base", 16, 224, "jx_vit_base_p16_224-80ecf9dd.pth", 81.78, 96.13),
    _jx("vit_base_patch16_384", "vit_base", 16, 384, "jx_vit_base_p16_384-83fb41ba.pth", 84.20, 97.22),
    _jx("vit_base_patch32_384", "vit_base", 32, 384, "jx_vit_base_p32_384-830016f5.pth", 81.66, 96.13),
    _jx("vit_base_resnet50_384", "vit_base_r50", 16, 384, "jx_vit_base_resnet50_384-9fd3c705.pth", 84.99, 97.30),
    _jx("vit_large_patch16_224", "vit_large", 16, 224, "jx_vit_large_p16_224-4ee7a4dc.pth", 83.06, 96.44),
    _jx("vit_large_patch16_384", "vit_large", 16, 384, "jx_vit_large_p16_384-b3be5167.pth", 85.17, 97.36),
    # Architectures without a model-card checkpoint.
    _plain("vit_base_patch32_224", "vit_base", 32, 224),
    _plain("vit_large_patch32_384", "vit_large", 32, 384),
    _plain("vit_huge_patch14_224", "vit_huge", 14, 224),
    _plain("vit_tiny_patch16_224", "vit_tiny", 16, 224),
    _plain("vit_tiny_patch16_384", "vit_tiny", 16, 384),
    _plain("vit_small_augreg_patch16_224", "vit_small_augreg", 16, 224),
    _plain("vit_small_augreg_patch16_384", "vit_small_augreg", 16, 384),
    _plain("vit_base_resnet50_224", "vit_base_r50", 16, 224),
    _plain("vit_test_patch4_32", "vit_test", 4, 32, crop_pct=1.0),
    _plain("vit_micro_patch4_32", "vit_micro", 4, 32, crop_pct=1.0),
]
VARIANTS: dict[str, Variant] = {v.cfg.name: v for v in _VARIANTS}

# Arguments of VisionTransformer a user may override from create_model / the config.
OVERRIDABLE = {
    "patch_size",
    "in_chans",
    "global_pool",
    "class_token",
    "representation_size",
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "head_bias_init",
    "qkv_bias",
    "mlp_ratio",
    "embed_dim",
    "depth",
    "num_heads",
}


def variant_name(family: str, patch_size: int, img_size: int) -> str:
    """The canonical name of a family at a patch size and resolution (no validation)."""
    if "hybrid_layers" in FAMILIES.get(family, {}):
        return f"{family.replace('_r50', '_resnet50')}_{img_size}"
    return f"{family}_patch{patch_size}_{img_size}"


def resolve_name(family: str, patch_size: int, img_size: int) -> str:
    """Validate a family / patch / resolution triple and return its canonical variant name.

    Raises:
        ValueError: unknown family, a resolution that the patch does not divide, or a hybrid with a patch
            other than its backbone stride.
    """
    if family in VARIANTS:
        family = VARIANTS[family].family
    if family not in FAMILIES:
        raise ValueError(_unknown_message(family, FAMILIES))
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


def _unknown_message(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known) + list(VARIANTS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown model {name!r}.{hint} Families: {', '.join(FAMILIES)}; "
        f"list every registered name with vit_exp.models.list_models()"
    )


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style pattern, sorted."""
    return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return list(FAMILIES)


def get_pretrained_cfg(name: str, img_size: int | None = None) -> PretrainedCfg:
    """Preprocessing and published metadata of a registered variant (or generic defaults for a family).

    Args:
        name: A registered name such as ``vit_base_patch16_384``, or a family such as ``vit_tiny``.
        img_size: Override the input size (e.g. a family at a small resolution).
    """
    if name in VARIANTS:
        cfg = VARIANTS[name].cfg
    elif name in FAMILIES:
        cfg = PretrainedCfg(name)
    else:
        raise ValueError(_unknown_message(name, FAMILIES))
    if img_size is not None and img_size != cfg.img_size:
        crop = cfg.crop_pct if img_size >= 224 else 1.0  # small images are not cropped
        cfg = dataclasses.replace(cfg, input_size=(cfg.input_size[0], img_size, img_size), crop_pct=crop)
    return cfg


def _architecture(name: str, img_size: int | None, patch_size: int | None) -> tuple[str, dict[str, Any], PretrainedCfg]:
    """Decode a name into (canonical name, VisionTransformer kwargs, metadata)."""
    if name in VARIANTS:
        family, patch, res = VARIANTS[name].family, VARIANTS[name].patch_size, VARIANTS[name].img_size
    elif name in FAMILIES:
        family, patch, res = name, FAMILIES[name].get("patch_size", 16), 224
    else:
        raise ValueError(_unknown_message(name, FAMILIES))
    patch, res = patch_size or patch, img_size or res
    canonical = resolve_name(family, patch, res)
    if canonical in VARIANTS:
        cfg = VARIANTS[canonical].cfg
    else:
        cfg = dataclasses.replace(get_pretrained_cfg(name, res), name=canonical)
    kwargs = {k: v for k, v in FAMILIES[family].items() if k != "patch_size"}
    kwargs.update(img_size=res, patch_size=patch)
    return canonical, kwargs, cfg


def resolve_pretrained_cfg(name: str, patch_size: int | None = None, img_size: int | None = None) -> PretrainedCfg:
    """The metadata that ``create_model(name, patch_size=..., img_size=...)`` attaches to its model.

    Raises:
        ValueError: unknown name, or an impossible patch/resolution pair.
    """
    return _architecture(name, img_size, patch_size)[2]


def create_model(
    name: str,
    num_classes: int | None = None,
    img_size: int | None = None,
    pretrained: str | Path | None = None,
    grad_checkpointing: bool = False,
    **overrides: Any,
) -> VisionTransformer:
    """Build a ViT by name, optionally loading a local checkpoint.

    Args:
        name: A registered variant (``vit_base_patch16_384``) or a family (``vit_base``) with
            ``patch_size``/``img_size``; a family at a registered patch/resolution gets that variant's metadata.
        num_classes: Head size; defaults to the variant's (1000). 0 builds a feature extractor.
        img_size: Input resolution; a checkpoint trained at another one has its position embedding resampled.
        pretrained: Path of a local checkpoint (.pth, .bin, .safetensors, .npz, or a vit_exp .ckpt).
        grad_checkpointing: Recompute block activations in backward to save memory.
        **overrides: Architecture arguments that papers vary (``patch_size``, ``global_pool``,
            ``class_token``, ``representation_size``, ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``,
            ``in_chans``, ``head_bias_init``, ...).

    Raises:
        ValueError: unknown name or override, or an impossible patch/resolution pair.
    """
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise ValueError(f"unknown model override(s) {sorted(unknown)}; allowed: {sorted(OVERRIDABLE)}")
    canonical, kwargs, cfg = _architecture(name, img_size, overrides.pop("patch_size", None))
    kwargs.update(overrides)
    kwargs["num_classes"] = cfg.num_classes if num_classes is None else num_classes
    if kwargs["num_classes"] != cfg.num_classes:
        cfg = dataclasses.replace(cfg, num_classes=kwargs["num_classes"])
    model = VisionTransformer(**kwargs)
    model.pretrained_cfg = cfg
    model.variant_name = canonical
    if pretrained:
        from vit_exp.models.checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    model.set_grad_checkpointing(grad_checkpointing)
    return model
