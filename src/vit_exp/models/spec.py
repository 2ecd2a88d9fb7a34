"""One resolution of a model config: ``resolve_spec`` -> ``ModelSpec``, and ``create_model`` that builds it.

A ``ModelSpec`` says what a model is, once, for train, eval, predict, export and bench: its architecture name
(``vit_base_patch32_384``; an overridden architecture gets a name that says so, ``vit_base_patch16_32-d1w32``),
the ``VisionTransformer`` arguments, the preprocessing (from the family and the resolution) and the published
weights it stands for, which attach only when the architecture (head included) is exactly the published one
and the name asked for those weights: ``vit_base_patch16_224`` resampled to 384 is not the 384 file.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit_exp.models.variants import (
    ARCHS,
    DEFAULT_PATCH,
    DEFAULT_RES,
    FAMILIES,
    INCEPTION_MEAN,
    INCEPTION_STD,
    WEIGHTS,
    Weights,
    default_weights,
    eval_crop_pct,
    family_mean_std,
    resolve_name,
    unknown_message,
)
from vit_exp.models.vit import VisionTransformer

PREPROCESSING = ("crop_pct", "interpolation", "mean", "std")  # what a data config may set instead of the model

# Overrides that change what the weights are (their short form in the name) and those that do not (training
# regularisation, initialisation): a published file still fits a model with another drop_path_rate.
ARCH_OVERRIDES = {
    "depth": "d",
    "embed_dim": "w",
    "num_heads": "h",
    "mlp_ratio": "mlp",
    "representation_size": "r",
    "in_chans": "c",
    "qkv_bias": "qkvb",
    "class_token": "cls",
    "global_pool": "",
    "distilled": "dist",
}
TRAINING_OVERRIDES = {"drop_rate", "attn_drop_rate", "drop_path_rate", "head_bias_init"}
OVERRIDABLE = {"patch_size", *ARCH_OVERRIDES, *TRAINING_OVERRIDES}
_DEFAULTS = {k: p.default for k, p in inspect.signature(VisionTransformer.__init__).parameters.items() if k != "self"}


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for the model at evaluation: resize, center crop, normalise."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str = "bicubic"

    @property
    def img_size(self) -> int:
        return self.input_size[-1]


@dataclass(frozen=True)
class PretrainedCfg:
    """timm's flat view of a spec (``model.pretrained_cfg``): preprocessing and the published weights' metadata."""

    name: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    num_classes: int = 1000
    file: str | None = None
    url: str | None = None
    top1: float | None = None
    top5: float | None = None

    @property
    def img_size(self) -> int:
        return self.input_size[-1]


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its name, its constructor arguments, its preprocessing and the weights it stands for.

    ``arguments`` holds every ``VisionTransformer`` keyword argument (defaults included) as sorted pairs (a
    frozen, picklable value); ``kwargs`` gives them as a dict.
    """

    arch: str
    family: str
    patch_size: int
    img_size: int
    num_classes: int
    arguments: tuple[tuple[str, Any], ...]
    preprocessing: Preprocessing
    weights: Weights | None = None

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.arguments)

    @property
    def pretrained_cfg(self) -> PretrainedCfg:
        w = self.weights
        return PretrainedCfg(
            self.arch,
            **{f.name: getattr(self.preprocessing, f.name) for f in dataclasses.fields(Preprocessing)},
            num_classes=self.num_classes,
            **({"file": w.file, "url": w.url, "top1": w.top1, "top5": w.top5} if w else {}),
        )


def _suffix(changed: dict[str, Any]) -> str:
    """The name's account of overridden architecture arguments: ``-d1w32h4``, ``-gap-nocls``."""
    sizes, flags = "", []
    for key, short in ARCH_OVERRIDES.items():
        if key not in changed:
            continue
        value = changed[key]
        if isinstance(value, bool):
            flags.append(("" if value else "no") + short)
        elif key == "global_pool":
            flags.append("gap" if value == "avg" else str(value))
        elif value is None:
            flags.append("no" + short)
        else:
            sizes += f"{short}{value:g}".replace(".", "p") if isinstance(value, float) else f"{short}{value}"
    return "".join(f"-{part}" for part in [sizes, *flags] if part)


def resolve_spec(
    name: str, patch_size: int | None = None, img_size: int | None = None, num_classes: int | None = None, **overrides: Any
) -> ModelSpec:
    """Resolve a model name (and what the config changes) into one ``ModelSpec``.

    Args:
        name: A registered architecture (``vit_base_patch16_384``), one with a weights tag
            (``vit_base_patch16_384.orig_in21k_ft_in1k``), or a family (``vit_base``) with patch and resolution.
        patch_size: Patch side; None: the name's.
        img_size: Input resolution; None: the name's (224 for a family).
        num_classes: Head size; None: the published weights' (1000). 0: no head (features).
        **overrides: ``VisionTransformer`` arguments (``depth``, ``embed_dim``, ``drop_path_rate``, ...).

    Raises:
        ValueError: an unknown name, tag or override, or an impossible patch/resolution pair; the message says
            what would work.
    """
    unknown = set(overrides) - OVERRIDABLE
    if unknown:
        raise ValueError(f"unknown model override(s) {sorted(unknown)}; allowed: {sorted(OVERRIDABLE)}")
    again = overrides.pop("patch_size", None)
    if patch_size is not None and again not in (None, patch_size):
        raise ValueError(f"patch_size given twice ({patch_size} and {again}); give it once")
    patch_size = patch_size or again
    arch_name, _, tag = name.partition(".")
    if arch_name in ARCHS:
        family, patch, res = ARCHS[arch_name].family, ARCHS[arch_name].patch_size, ARCHS[arch_name].img_size
    elif arch_name in FAMILIES and not tag:
        family, patch, res = arch_name, FAMILIES[arch_name].get("patch_size", DEFAULT_PATCH), DEFAULT_RES
    else:
        raise ValueError(unknown_message(name))
    if tag and name not in WEIGHTS:
        known = [w for w in WEIGHTS if w.startswith(arch_name + ".")]
        raise ValueError(f"no published weights {name!r}; {arch_name} has {', '.join(known) or 'none'}")
    patch, res = patch_size or patch, img_size or res
    canonical = resolve_name(family, patch, res)

    base = {k: v for k, v in FAMILIES[family].items() if k != "patch_size"}
    changed = {k: v for k, v in overrides.items() if k in ARCH_OVERRIDES and v != base.get(k, _DEFAULTS[k])}
    # A registered name stands for its own file; a family for the file of the architecture it resolves to.
    named = arch_name if arch_name in ARCHS else canonical
    weights = WEIGHTS[name] if tag else default_weights(named)
    head = num_classes if num_classes is not None else weights.num_classes if weights else 1000
    if weights and (named != canonical or changed or head != weights.num_classes):
        weights = None  # another resolution, architecture or head: not the published weights (nor their top-1)

    mean, std = family_mean_std(family)
    in_chans = overrides.get("in_chans", _DEFAULTS["in_chans"])
    kwargs = {**_DEFAULTS, **base, **overrides, "img_size": res, "patch_size": patch, "num_classes": head}
    return ModelSpec(
        arch=canonical + _suffix(changed),
        family=family,
        patch_size=patch,
        img_size=res,
        num_classes=head,
        arguments=tuple(sorted(kwargs.items())),
        preprocessing=Preprocessing((in_chans, res, res), mean, std, eval_crop_pct(res)),
        weights=weights,
    )


def with_weights_file(spec: ModelSpec, path: str | Path) -> ModelSpec:
    """The spec of a model that holds the weights of ``path``: a published file of another architecture (the
    224 file resampled to 384) is not the spec's published weights, so their metadata goes."""
    name = Path(path).name
    other = spec.weights is not None and name != spec.weights.file and any(w.file == name for w in WEIGHTS.values())
    return dataclasses.replace(spec, weights=None) if other else spec


def get_pretrained_cfg(name: str, img_size: int | None = None) -> PretrainedCfg:
    """Preprocessing and published metadata of a name (a registered architecture or a family) at a resolution."""
    return resolve_spec(name, img_size=img_size).pretrained_cfg


def resolve_pretrained_cfg(name: str, patch_size: int | None = None, img_size: int | None = None) -> PretrainedCfg:
    """The metadata that ``create_model(name, patch_size=..., img_size=...)`` attaches to its model.

    Raises:
        ValueError: unknown name, or an impossible patch/resolution pair.
    """
    return resolve_spec(name, patch_size, img_size).pretrained_cfg


def create_model(
    name: str | ModelSpec,
    num_classes: int | None = None,
    img_size: int | None = None,
    pretrained: str | Path | None = None,
    grad_checkpointing: bool = False,
    flexi: dict[str, Any] | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """Build a ViT from a ``ModelSpec`` or by name, optionally loading a local checkpoint.

    The model carries its ``spec``, ``pretrained_cfg`` (the spec's flat view) and ``variant_name`` (its arch).

    Args:
        name: A ``ModelSpec`` (complete: no other architecture argument), or a name as ``resolve_spec`` takes:
            a registered variant (``vit_base_patch16_384``) or a family (``vit_base``) with
            ``patch_size``/``img_size``.
        num_classes: Head size; defaults to the variant's (1000). 0 builds a feature extractor.
        img_size: Input resolution; a checkpoint trained at another one has its position embedding resampled.
        pretrained: Path of a local checkpoint (.pth, .bin, .safetensors, .npz, or a vit_exp .ckpt).
        grad_checkpointing: Recompute block activations in backward to save memory.
        flexi: FlexiViT: run at other patch sizes (``vit_exp.models.flexi.make_flexible``'s arguments).
        **overrides: Architecture arguments that papers vary (``patch_size``, ``global_pool``,
            ``class_token``, ``representation_size``, ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``,
            ``in_chans``, ``head_bias_init``, ``depth``, ``embed_dim``, ``num_heads``, ...).

    Raises:
        ValueError: unknown name or override, an impossible patch/resolution pair, or a spec with arguments.
    """
    if isinstance(name, ModelSpec):
        given = {k: v for k, v in dict(num_classes=num_classes, img_size=img_size, **overrides).items() if v is not None}
        if given:
            raise ValueError(f"a ModelSpec is complete: pass {sorted(given)} to resolve_spec instead")
        spec = name
    else:
        spec = resolve_spec(name, img_size=img_size, num_classes=num_classes, **overrides)
    if pretrained:
        spec = with_weights_file(spec, pretrained)
    model = VisionTransformer(**spec.kwargs)
    model.spec = spec
    model.pretrained_cfg = spec.pretrained_cfg
    model.variant_name = spec.arch
    if pretrained:
        from vit_exp.models.checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    model.set_grad_checkpointing(grad_checkpointing)
    if flexi:
        from vit_exp.models.flexi import make_flexible

        make_flexible(model, **flexi)
    return model
