"""FlexiViT (Beyer et al. 2023, "FlexiViT: One Model for All Patch Sizes"): one set of weights run at any patch size.

The stored patch-embedding kernel (the model's ``patch_size``) is resized to the patch size of each forward by the
pseudo-inverse rule ("PI-resize"): the new kernel ``w'`` is the least-squares solution of ``<resize(x), w'> =
<x, w>`` for every patch ``x``, i.e. ``w' = pinv(B)^T w`` with ``B`` the matrix of the resize of a patch
(``resample_patch_embed``, equal to ``timm.layers.resample_patch_embed``). The position embedding is resampled to
the new grid (``vit_exp.models.layers.resample_pos_embed``, equal to timm's ``resample_abs_pos_embed``).

Both default to timm's interpolation (bicubic, antialiased); big_vision's FlexiViT builds ``B`` with bilinear
``tf.image.resize`` (no antialias) and resizes the position embedding bilinearly (``interpolation="bilinear"``).
We write our own rather than call timm: ``vit_exp.models`` depends on torch only (timm is a test oracle here).
Torch only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit_exp.models.layers import resample_pos_embed

INTERPOLATIONS = ("bilinear", "bicubic")


def resize_matrix(old: int, new: int, interpolation: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """The linear map of resizing a square ``old`` x ``old`` patch to ``new`` x ``new``: (new*new, old*old), fp32.

    Built as timm does: every basis patch resized with ``F.interpolate`` (half-pixel centres, as
    ``tf.image.resize``).
    """
    basis = torch.eye(old * old, dtype=torch.float32).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode=interpolation, antialias=antialias, align_corners=False)
    return resized.squeeze(1).permute(1, 2, 0).reshape(new * new, old * old)


@functools.lru_cache(maxsize=64)
def _pinv(old: int, new: int, interpolation: str, antialias: bool) -> torch.Tensor:
    # The same few sizes recur for the whole run: one SVD each (a 32 -> 48 kernel is a 2304 x 1024 matrix).
    return torch.linalg.pinv(resize_matrix(old, new, interpolation, antialias))


def pinv_matrix(old: int, new: int, interpolation: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """``pinv(resize_matrix(old, new))``, (old*old, new*new) in fp32 on the CPU; cached (do not modify it)."""
    return _pinv(old, new, interpolation, antialias)


def apply_pinv(weight: torch.Tensor, pinv: torch.Tensor, new: int) -> torch.Tensor:
    """A (D, C, P, P) kernel resized to (D, C, new, new) by a ``pinv_matrix``, computed in fp32."""
    d, c = weight.shape[:2]
    resized = weight.reshape(d, c, -1).float() @ pinv.to(weight.device)  # (D, C, P*P) @ (P*P, p*p)
    return resized.reshape(d, c, new, new).to(weight.dtype)


def resample_patch_embed(
    weight: torch.Tensor, new_size: int | Sequence[int], interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """PI-resize a square patch-embedding kernel (D, C, P, P) to (D, C, p, p) (timm's ``resample_patch_embed``).

    Args:
        weight: The conv kernel of a patch embedding.
        new_size: The new patch side ``p`` (or a square ``(p, p)``).
        interpolation: ``bicubic`` (timm) or ``bilinear`` (big_vision).
        antialias: Antialiased resize when shrinking (timm: True; big_vision's kernel resize: False).
    """
    new = new_size if isinstance(new_size, int) else int(new_size[0])
    if not isinstance(new_size, int) and tuple(new_size) != (new, new):
        raise ValueError(f"square patches only, got {tuple(new_size)}")
    old = weight.shape[-1]
    if weight.shape[-2] != old:
        raise ValueError(f"square kernels only, got {tuple(weight.shape[-2:])}")
    if new == old:
        return weight
    return apply_pinv(weight, pinv_matrix(old, new, interpolation, antialias), new)


class PatchSizes(nn.Module):
    """The FlexiViT state of a patch embedding: the patch size it runs at now and the PI-resize matrices.

    No parameters and no buffers (nothing in the state dict, nothing for DDP to broadcast); the matrices follow
    the model's device through ``_apply`` and stay fp32 whatever the model's dtype. Under ``torch.compile`` the
    patch size is a guarded constant: one graph per size.

    Args:
        img_size: The model's input resolution.
        stored: The stored kernel's side (the model's ``patch_size``).
        patch_sizes: The sizes training draws from (may be empty: evaluation at one other size).
        eval_patch_size: The size of evaluation and of the model outside training; None: ``stored``.
        interpolation: Of the kernel's resize matrix and of the position embedding (``INTERPOLATIONS``).
        antialias: Antialiased resize when shrinking.
    """

    def __init__(
        self,
        img_size: int,
        stored: int,
        patch_sizes: Sequence[int] = (),
        eval_patch_size: int | None = None,
        interpolation: str = "bicubic",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.img_size, self.stored = img_size, stored
        self.eval_patch_size = eval_patch_size or stored
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        self.interpolation, self.antialias = interpolation, antialias
        for p in {*self.patch_sizes, self.eval_patch_size}:
            _check_size(p, img_size)
        self._device = torch.device("cpu")
        self._pinv: dict[int, torch.Tensor] = {}
        self.patch_size = stored
        self.set(self.eval_patch_size)

    def set(self, patch_size: int) -> None:
        """Run at ``patch_size`` from the next forward on (its matrix is made here, outside any compiled graph)."""
        if patch_size != self.stored and patch_size not in self._pinv:
            _check_size(patch_size, self.img_size)
            pinv = pinv_matrix(self.stored, patch_size, self.interpolation, self.antialias)
            self._pinv[patch_size] = pinv.to(self._device)
        self.patch_size = patch_size

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> nn.Module:
        # .to()/.cuda() move the matrices (they are not buffers); a dtype change leaves them fp32.
        self._device = fn(torch.empty(0, device=self._device)).device
        self._pinv = {p: m.to(self._device) for p, m in self._pinv.items()}
        return super()._apply(fn, *args, **kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid at the current patch size."""
        side = self.img_size // self.patch_size
        return side, side

    def kernel(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored kernel (D, C, P, P) resized to the current patch size (D, C, p, p)."""
        return apply_pinv(weight, self._pinv[self.patch_size], self.patch_size)

    def pos_embed(self, pos_embed: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        """The stored position embedding resampled to the current grid (prefix tokens kept)."""
        return resample_pos_embed(pos_embed, self.grid_size, num_prefix_tokens, self.interpolation, self.antialias)

    def extra_repr(self) -> str:
        return f"stored={self.stored}, patch_size={self.patch_size}, patch_sizes={self.patch_sizes}"


def _check_size(patch_size: int, img_size: int) -> None:
    if patch_size < 1 or img_size % patch_size:
        raise ValueError(
            f"patch size {patch_size} does not divide the resolution {img_size}; FlexiViT runs at sizes that do: "
            f"{divisors(img_size)}"
        )


def divisors(n: int) -> list[int]:
    """The patch sizes a resolution ``n`` can run at (1 and ``n`` left out)."""
    return [d for d in range(2, n) if n % d == 0]


def make_flexible(
    model: nn.Module,
    patch_sizes: Sequence[int] | None = None,
    eval_patch_size: int | None = None,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> nn.Module:
    """Let a ``VisionTransformer`` run at other patch sizes than its stored one (in place; returns it).

    The ``model.flexi`` config node's arguments. Without ``patch_sizes`` and with ``eval_patch_size`` null (or
    the model's own) the model is left as it is: the same forward, with no resize in its graph.

    Raises:
        ValueError: a hybrid model (its ResNet stem has no patch kernel), or a size that does not divide the
            model's resolution.
    """
    embed = model.patch_embed
    stored = getattr(embed, "patch_size", None)
    if not patch_sizes and eval_patch_size in (None, stored):
        return model
    if not hasattr(embed, "flexi"):
        raise ValueError(f"{type(embed).__name__} has no patch kernel to resize; FlexiViT needs a plain ViT")
    embed.flexi = PatchSizes(embed.img_size, stored, patch_sizes or (), eval_patch_size, interpolation, antialias)
    return model


def patch_sizes_of(model: nn.Module) -> PatchSizes | None:
    """The FlexiViT state of a model (``make_flexible``), or None for a model that runs at its own size only."""
    return getattr(getattr(model, "patch_embed", None), "flexi", None)
