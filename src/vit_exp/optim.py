"""Pure functions for the optimizer wiring: which parameters decay, and the learning-rate schedule.

Both are chosen in ``conf/optim`` and ``conf/sched`` and wired by ``vit_exp.module.ViTModule``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of the config checks that import DECAYS
    from torch import nn

DECAYS = ("cosine", "linear", "constant")


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
