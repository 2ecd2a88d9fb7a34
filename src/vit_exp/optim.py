"""Pure functions for the optimizer wiring: which parameters decay, layer-wise lr decay, and the schedule.

Both are chosen in ``conf/optim`` and ``conf/sched`` and wired by ``vit_exp.module.ViTModule``.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of the config checks that import DECAYS
    import torch
    from torch import nn

DECAYS = ("cosine", "linear", "constant")
# Where optimizers run fused by default. Not the CPU: its fused AdamW rounds differently from the default loop
# (vit_micro, 20 steps: weights differ by up to 2e-5), and the default run must reproduce bit for bit.
FUSED_DEVICES = ("cuda",)


def param_groups(
    model: nn.Module, weight_decay: float | None = None, layer_decay: float | None = None
) -> list[dict[str, Any]]:
    """Split parameters into a decayed and a non-decayed group (nanoGPT's rule, timm's exceptions), and with
    ``layer_decay`` each of them by layer (BEiT, MAE, timm's ``--layer-decay``).

    A parameter decays when it is a weight matrix or kernel (``ndim >= 2``) and the model does not list
    it in ``no_weight_decay()`` (ViT: position embedding, class and distillation tokens). Norms and biases never
    decay. With ``layer_decay``, a group of layer ``i`` (``layer_id``) carries ``lr_scale = layer_decay **
    (depth + 1 - i)``: the head learns at the full rate, each block below it at ``layer_decay`` times the one above;
    ``scale_lrs`` applies the scales. The groups equal timm's ``param_groups_layer_decay`` (a test holds it).

    Args:
        model: The network; frozen parameters (``requires_grad=False``) are left out.
        weight_decay: Decay of the decayed groups; None leaves it to the optimizer's own ``weight_decay``.
        layer_decay: The lr ratio of a layer to the one above it, in (0, 1]; None: no layer groups (two groups).

    Returns:
        ``[{"params": decayed}, {"params": others, "weight_decay": 0.0}]`` for ``torch.optim``; with
        ``layer_decay``, such a pair per layer (empty groups left out), each with its ``lr_scale``, by layer.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    depth = len(model.blocks) if layer_decay is not None else 0
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, depth) if layer_decay is not None else 0
        groups.setdefault((layer, p.ndim >= 2 and name not in skip), []).append(p)
    if layer_decay is None:
        keys = [(0, True), (0, False)]  # the two groups, even when one is empty
    else:
        keys = sorted(groups, key=lambda k: (k[0], not k[1]))  # by layer, the decayed group first
    out = []
    for layer, decays in keys:
        group: dict[str, Any] = {"params": groups.get((layer, decays), [])}
        if not decays:
            group["weight_decay"] = 0.0
        elif weight_decay is not None:
            group["weight_decay"] = weight_decay
        if layer_decay is not None:
            group["lr_scale"] = layer_decay ** (depth + 1 - layer)
        out.append(group)
    return out


def layer_id(name: str, depth: int) -> int:
    """The layer of a ViT parameter for layer-wise lr decay, as timm's ``group_matcher`` numbers them: the
    embeddings (patch, position, class and distillation tokens) 0, block ``i`` ``i + 1``, the final norm with the
    last block (``depth``; BEiT and MAE put it with the head), the head(s) and pre-logits ``depth + 1``."""
    if name.startswith(("patch_embed.", "pos_embed", "cls_token", "dist_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith("norm."):
        return depth
    return depth + 1


def scale_lrs(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Multiply each group's lr by its ``lr_scale`` (``param_groups(..., layer_decay=...)``), once, before the
    schedule is made: ``LambdaLR`` takes the scaled lrs as its base (``initial_lr``), so each step's lr is
    ``lr * lr_scale * schedule(step)``, and a resumed run restores them with the optimizer's and scheduler's state."""
    for group in optimizer.param_groups:
        if "lr_scale" in group:
            group["lr"] = group["lr"] * group["lr_scale"]
    return optimizer


def build_optimizer(
    factory: Callable[..., torch.optim.Optimizer], params: Any, device: torch.device
) -> torch.optim.Optimizer:
    """``factory(params)``, with ``fused=True`` where torch has a fused kernel for it on ``device``.

    Fused (one kernel for all tensors) where the optimizer takes ``fused`` (AdamW, Adam, SGD), the device is in
    ``FUSED_DEVICES`` and the config did not choose (``optim.fused=false`` turns it off).
    """
    chosen = "fused" in getattr(factory, "keywords", {})
    func = getattr(factory, "func", factory)
    if device.type in FUSED_DEVICES and not chosen and "fused" in inspect.signature(func).parameters:
        return factory(params, fused=True)
    return factory(params)


_GRAD_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> (step, norm)


def grad_norm(optimizer: torch.optim.Optimizer, step: int) -> torch.Tensor | None:
    """The 2-norm of all gradients of ``optimizer``'s parameters at optimizer step ``step``, on their device.

    Computed once per step (``torch.nn.utils.get_total_norm``) and remembered for that step, so that the NaN
    guard and gradient clipping (``ViTModule.configure_gradient_clipping``) share one norm. None: no gradients.
    """
    import torch

    cached = _GRAD_NORMS.get(optimizer)
    if cached is not None and cached[0] == step:
        return cached[1]
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else None
    _GRAD_NORMS[optimizer] = (step, norm)
    return norm


def warmup_decay(
    step: int, total_steps: int, warmup_steps: int = 0, decay: str = "cosine", min_lr_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier at ``step``: linear warmup to 1, then cosine, linear or no decay.

    The ViT paper warms up linearly for 10k steps, then decays linearly (pretraining) or with a cosine
    (fine-tuning), to zero. Use with ``torch.optim.lr_scheduler.LambdaLR`` stepped every optimizer step.
    The warmup counts the step being taken (timm's ``warmup_t`` style, ``step + 1``): the first update uses
    ``1 / warmup_steps`` of the learning rate, not 0 (an update at lr 0 would be a wasted step), and step
    ``warmup_steps - 1`` reaches the full rate.

    Args:
        step: Optimizer steps taken so far (0 for the first).
        total_steps: Steps of the whole run; the decay reaches ``min_lr_ratio`` there.
        warmup_steps: Steps of the linear warmup.
        decay: "cosine", "linear" or "constant".
        min_lr_ratio: Final multiplier (the end learning rate over the peak).

    Returns:
        Multiplier of the optimizer's base learning rate, in [0, 1].
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; use one of {DECAYS}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape
