"""Pure functions for the optimizer wiring: which parameters decay, and the learning-rate schedule.

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


def param_groups(model: nn.Module, weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Split parameters into a decayed and a non-decayed group (nanoGPT's rule, timm's exceptions).

    A parameter decays when it is a weight matrix or kernel (``ndim >= 2``) and the model does not list
    it in ``no_weight_decay()`` (ViT: position embedding and class token). Norms and biases never decay.

    Args:
        model: The network; frozen parameters (``requires_grad=False``) are left out.
        weight_decay: Decay of the first group; None leaves it to the optimizer's own ``weight_decay``.

    Returns:
        ``[{"params": decayed}, {"params": others, "weight_decay": 0.0}]`` for ``torch.optim``.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and name not in skip:
            decay.append(p)
        else:
            no_decay.append(p)
    first: dict[str, Any] = {"params": decay}
    if weight_decay is not None:
        first["weight_decay"] = weight_decay
    return [first, {"params": no_decay, "weight_decay": 0.0}]


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
