"""Loading published and local checkpoints into a ``VisionTransformer``. No network, safe loaders only.

Formats: timm ``.pth``/``.bin`` state dicts (the model card's files, including the legacy ViT-S/16 with a
linear patch projection and the hybrid), ``.safetensors``, Google's ``.npz`` (google-research/vision_transformer
and big_vision layouts), and single-file Lightning ``.ckpt`` files. Each format is turned into a plain state dict
by a pure function; ``adapt_state_dict`` then fits it to the model (resolution, head). The directories of sharded
FSDP checkpoints are a run's, not a published format: ``vit_exp.checkpoints.load_weights`` reads them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vit_exp.models.layers import resample_pos_embed

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8})\.[A-Za-z]+$")


def verify_file_hash(path: Path) -> None:
    """Check a published file against the SHA-256 prefix in its name (``name-80ecf9dd.pth``).

    Raises:
        ValueError: the file's hash does not start with the prefix in its name.
    """
    m = _HASH_IN_NAME.search(path.name)
    if not m:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(m.group(1)):
        raise ValueError(
            f"{path} is damaged or not the published file: its SHA-256 starts with {digest.hexdigest()[:8]}, "
            f"the name says {m.group(1)}; download it again (a partial download is the usual cause)"
        )


def load_state_dict_file(path: str | Path, model: nn.Module | None = None) -> StateDict:
    """Read a checkpoint file into a flat state dict with timm/vit_exp key names.

    Args:
        path: A ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch), ``.safetensors`` or ``.npz`` file.
        model: Needed for ``.npz`` files only, to know the depth and hybrid stages to read.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not a weights file; the sharded (FSDP) checkpoint directories of a run are "
            "read by vit_exp.checkpoints.load_weights(model, path) (as eval.py and predict.py do)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a local file")
    verify_file_hash(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if suffix == ".npz":
        if model is None:
            raise ValueError("reading an .npz checkpoint needs the model (its depth and stages)")
        with np.load(path, allow_pickle=False) as npz:
            return npz_to_state_dict({k: npz[k] for k in npz.files}, model)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors carry no path; say what the file is and what to do
        raise ValueError(
            f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {e}); only plain tensor state dicts "
            f"load safely (weights_only=True): re-save it with torch.save(model.state_dict(), ...)"
        ) from e
    return unwrap_state_dict(obj)


def unwrap_state_dict(obj: Mapping) -> StateDict:
    """Find the model's tensors in a saved object: nested ``state_dict``/``model`` keys, Lightning's
    ``model.`` prefix, DDP's ``module.`` and torch.compile's ``_orig_mod.``."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
    sd = {k.replace("_orig_mod.", ""): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if "pos_embed" not in sd:
        anchors = [k for k in sd if k.endswith("pos_embed")]
        if len(anchors) == 1:
            prefix = anchors[0][: -len("pos_embed")]
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _t(a: np.ndarray) -> torch.Tensor:
    """Flax kernel layout to torch: HWIO conv -> OIHW, (in, out) dense -> (out, in)."""
    a = np.asarray(a)
    if a.ndim == 4:
        a = a.transpose(3, 2, 0, 1)
    elif a.ndim == 2:
        a = a.T
    return torch.from_numpy(np.ascontiguousarray(a))


def _detect_npz_prefix(w: Mapping[str, np.ndarray]) -> str:
    for prefix in ("", "opt/target/", "params/", "params/img/"):
        if f"{prefix}embedding/kernel" in w:
            return prefix
    raise ValueError(
        "this .npz is not a ViT checkpoint in Google's layout: no 'embedding/kernel' "
        "(looked under '', 'opt/target/', 'params/', 'params/img/')"
    )


def npz_to_state_dict(w: Mapping[str, np.ndarray], model: nn.Module) -> StateDict:
    """Convert Google's flattened Flax checkpoint to our key names.

    Handles the google-research/vision_transformer layout (``Transformer/encoderblock_i/
    MultiHeadDotProductAttention_1``, ``MlpBlock_3``, ``LayerNorm_0/2``) and big_vision's
    (``params/`` prefix, top-level ``pos_embedding``, ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``,
    ``LayerNorm_0/1``; blocks stacked under ``encoderblock`` when trained with scan), plus the R50 stem and
    stages of the hybrid. Position embeddings are returned as stored; ``adapt_state_dict`` resamples.
    """
    p = _detect_npz_prefix(w)
    big_vision = p.startswith("params/") or f"{p}pos_embedding" in w or f"{p}Transformer/encoderblock/LayerNorm_0/scale" in w
    sd: StateDict = {}
    if hasattr(model.patch_embed, "backbone"):
        sd.update(_npz_resnet(w, p, model.patch_embed.backbone))
    sd["patch_embed.proj.weight"] = _t(w[f"{p}embedding/kernel"])
    sd["patch_embed.proj.bias"] = _t(w[f"{p}embedding/bias"])
    if f"{p}cls" in w:
        sd["cls_token"] = torch.from_numpy(np.asarray(w[f"{p}cls"]))
    pos = w[f"{p}pos_embedding"] if big_vision and f"{p}pos_embedding" in w else w[f"{p}Transformer/posembed_input/pos_embedding"]
    sd["pos_embed"] = torch.from_numpy(np.asarray(pos))
    sd["norm.weight"] = _t(w[f"{p}Transformer/encoder_norm/scale"])
    sd["norm.bias"] = _t(w[f"{p}Transformer/encoder_norm/bias"])
    if f"{p}head/kernel" in w:
        sd["head.weight"] = _t(w[f"{p}head/kernel"])
        sd["head.bias"] = _t(w[f"{p}head/bias"])
    if f"{p}pre_logits/kernel" in w:
        sd["pre_logits.fc.weight"] = _t(w[f"{p}pre_logits/kernel"])
        sd["pre_logits.fc.bias"] = _t(w[f"{p}pre_logits/bias"])

    mha, mlp, ln2 = (0, 0, 1) if big_vision else (1, 3, 2)
    stacked = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in w
    for i in range(len(model.blocks)):
        bp = f"{p}Transformer/encoderblock/" if stacked else f"{p}Transformer/encoderblock_{i}/"

        def get(key: str) -> np.ndarray:
            return w[bp + key][i] if stacked else w[bp + key]

        out = f"blocks.{i}."
        a = f"MultiHeadDotProductAttention_{mha}/"
        sd[out + "norm1.weight"] = _t(get("LayerNorm_0/scale"))
        sd[out + "norm1.bias"] = _t(get("LayerNorm_0/bias"))
        # q/k/v kernels are (D, heads, head_dim): flatten the heads, transpose, stack into one qkv.
        sd[out + "attn.qkv.weight"] = torch.cat(
            [torch.from_numpy(get(f"{a}{n}/kernel").reshape(get(f"{a}{n}/kernel").shape[0], -1).T) for n in ("query", "key", "value")]
        )
        sd[out + "attn.qkv.bias"] = torch.cat([torch.from_numpy(get(f"{a}{n}/bias").reshape(-1)) for n in ("query", "key", "value")])
        o = get(f"{a}out/kernel")  # (heads, head_dim, D)
        sd[out + "attn.proj.weight"] = torch.from_numpy(np.ascontiguousarray(o.reshape(-1, o.shape[-1]).T))
        sd[out + "attn.proj.bias"] = _t(get(f"{a}out/bias"))
        sd[out + "norm2.weight"] = _t(get(f"LayerNorm_{ln2}/scale"))
        sd[out + "norm2.bias"] = _t(get(f"LayerNorm_{ln2}/bias"))
        for r in range(2):
            sd[out + f"mlp.fc{r + 1}.weight"] = _t(get(f"MlpBlock_{mlp}/Dense_{r}/kernel"))
            sd[out + f"mlp.fc{r + 1}.bias"] = _t(get(f"MlpBlock_{mlp}/Dense_{r}/bias"))
    return sd


def _npz_resnet(w: Mapping[str, np.ndarray], p: str, backbone: nn.Module) -> StateDict:
    """The hybrid's R50: ``conv_root``/``gn_root`` and ``block{s}/unit{u}/conv{r}|gn{r}|conv_proj|gn_proj``."""
    out = "patch_embed.backbone."
    sd = {
        out + "stem.conv.weight": _t(w[f"{p}conv_root/kernel"]),
        out + "stem.norm.weight": _t(w[f"{p}gn_root/scale"]).flatten(),
        out + "stem.norm.bias": _t(w[f"{p}gn_root/bias"]).flatten(),
    }
    for s, stage in enumerate(backbone.stages):
        for u, block in enumerate(stage.blocks):
            src, dst = f"{p}block{s + 1}/unit{u + 1}/", f"{out}stages.{s}.blocks.{u}."
            names = [(f"conv{r}", f"gn{r}", f"conv{r}", f"norm{r}") for r in (1, 2, 3)]
            if block.downsample is not None:
                names.append(("conv_proj", "gn_proj", "downsample.conv", "downsample.norm"))
            for conv, gn, conv_dst, norm_dst in names:
                sd[dst + conv_dst + ".weight"] = _t(w[src + conv + "/kernel"])
                sd[dst + norm_dst + ".weight"] = _t(w[src + gn + "/scale"]).flatten()
                sd[dst + norm_dst + ".bias"] = _t(w[src + gn + "/bias"]).flatten()
    return sd


def adapt_state_dict(
    sd: StateDict, model: nn.Module, interpolation: str = "bicubic", antialias: bool = True
) -> StateDict:
    """Fit a state dict to ``model``: the pure ``filter_fn(state_dict, model) -> state_dict`` of this module.

    - a linear patch projection (legacy timm ViT-S/16, trained before conv patchification) becomes a conv;
    - the position embedding is resampled to the model's grid (bicubic + antialias as timm's ``.pth``
      path; its ``.npz`` path uses bilinear without antialias);
    - a head (distillation head, pre-logits layer) of another size is dropped with a warning, keeping the
      model's fresh one.
    """
    model_sd = model.state_dict()
    sd = dict(sd)
    w = sd.get("patch_embed.proj.weight")
    target = model_sd["patch_embed.proj.weight"]
    if w is not None and w.ndim == 2 and target.ndim == 4 and w.numel() == target.numel():
        sd["patch_embed.proj.weight"] = w.reshape(target.shape)
    if "pos_embed" in sd and sd["pos_embed"].shape != model_sd["pos_embed"].shape:
        pe = sd["pos_embed"]
        if pe.ndim == 2:
            pe = pe.unsqueeze(0)
        # A square token count has no class-token entry (big_vision "gap" models); otherwise one does, and DeiT's
        # distilled models a second one, for their distillation token.
        ckpt_prefix = 2 if "dist_token" in sd else 0 if math.isqrt(pe.shape[1]) ** 2 == pe.shape[1] else 1
        new = resample_pos_embed(pe, model.grid_size, ckpt_prefix, interpolation, antialias)
        if ckpt_prefix > model.num_prefix_tokens:  # the model's prefix tokens come first; the others go
            new = torch.cat([new[:, : model.num_prefix_tokens], new[:, ckpt_prefix:]], dim=1)
        log.info("resampled position embedding %s -> %s", tuple(pe.shape), tuple(new.shape))
        sd["pos_embed"] = new
    for layer in ("head", "head_dist", "pre_logits.fc"):
        keys = [k for k in sd if k.startswith(layer + ".")]
        if keys and any(k not in model_sd or sd[k].shape != model_sd[k].shape for k in keys):
            ckpt_shape = tuple(sd[layer + ".weight"].shape) if layer + ".weight" in sd else None
            model_shape = tuple(model_sd[layer + ".weight"].shape) if layer + ".weight" in model_sd else None
            warnings.warn(
                f"checkpoint {layer} {ckpt_shape} does not fit the model's {model_shape} "
                f"({model.num_classes} classes); it is dropped and the model keeps a freshly initialised {layer}",
                stacklevel=3,
            )
            for k in keys:
                del sd[k]
    return sd


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a local checkpoint into ``model``, adapting resolution and head.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is damaged, of an unknown kind, or does not fit the architecture; the message
            lists the offending keys and shapes.
    """
    path = Path(path)
    npz = path.suffix.lower() == ".npz"
    sd = load_state_dict_file(path, model)
    load_state_dict(model, sd, path, strict, interpolation="bilinear" if npz else "bicubic", antialias=not npz)


def load_state_dict(
    model: nn.Module,
    sd: StateDict,
    source: str | Path,
    strict: bool = True,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> None:
    """Load a state dict read from ``source`` into ``model``, adapting resolution and head (``adapt_state_dict``).

    Raises:
        ValueError: it does not fit the architecture; the message lists the offending keys and shapes.
    """
    sd = adapt_state_dict(sd, model, interpolation=interpolation, antialias=antialias)
    model_sd = model.state_dict()
    dropped_heads = {k for k in model_sd if k.startswith(("head.", "head_dist.", "pre_logits.")) and k not in sd}
    missing = sorted(set(model_sd) - set(sd) - dropped_heads)
    unexpected = sorted(set(sd) - set(model_sd))
    mismatched = sorted(k for k in set(sd) & set(model_sd) if sd[k].shape != model_sd[k].shape)
    if strict and (missing or unexpected or mismatched):
        lines = [f"  shape {k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}" for k in mismatched]
        lines += [f"  missing from checkpoint: {k} {tuple(model_sd[k].shape)}" for k in missing[:20]]
        lines += [f"  not in model: {k} {tuple(sd[k].shape)}" for k in unexpected[:20]]
        more = max(0, len(missing) - 20) + max(0, len(unexpected) - 20)
        raise ValueError(
            f"checkpoint {source} does not fit {getattr(model, 'variant_name', type(model).__name__)}:\n"
            + "\n".join(lines)
            + (f"\n  ... and {more} more" if more else "")
            + "\nPick the model the checkpoint was trained as (architecture, patch size, hybrid or not)."
        )
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in sd.items() if k not in mismatched and k in model_sd}, strict=False)
    log.info("loaded %s (%d tensors)", source, len(sd))
