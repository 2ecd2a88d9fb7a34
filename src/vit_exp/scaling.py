"""Global batch and learning-rate scaling: how a recipe written for one batch size runs on other hardware.

A recipe states its learning rate at a reference batch (``lr_scaling.base_batch``, e.g. DeiT's 5e-4 at 512);
the run's global batch is per-device batch x gradient accumulation x devices x nodes, and the learning rate
follows the recipe's rule (linear, as Goyal et al. 2017 and DeiT; sqrt, as often for Adam; or none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

RULES = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class BatchPlan:
    per_device: int
    accumulate: int
    devices: int
    nodes: int
    base_lr: float
    lr: float
    rule: str
    base_batch: int | None

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulate * self.devices * self.nodes

    def describe(self) -> str:
        batch = (
            f"global batch {self.global_batch} = {self.per_device} per device x {self.accumulate} accumulation "
            f"x {self.devices} device{'s' if self.devices > 1 else ''} x {self.nodes} node{'s' if self.nodes > 1 else ''}"
        )
        if self.rule == "none" or not self.base_batch:
            return f"{batch}; lr {self.lr:.4g}"
        return f"{batch}; lr {self.lr:.4g} ({self.rule} scaling of {self.base_lr:.4g} at batch {self.base_batch})"


def scaled_lr(base_lr: float, global_batch: int, base_batch: int | None, rule: str = "none") -> float:
    """The learning rate for ``global_batch`` from a recipe's ``base_lr`` at ``base_batch``.

    Raises:
        ValueError: an unknown rule, or a scaling rule without a base batch.
    """
    if rule not in RULES:
        raise ValueError(f"unknown lr_scaling.rule {rule!r}; use one of {RULES}")
    if rule == "none":
        return base_lr
    if not base_batch or base_batch <= 0:
        raise ValueError(f"lr_scaling.rule={rule} needs lr_scaling.base_batch, the batch the recipe's lr is for")
    ratio = global_batch / base_batch
    return base_lr * (ratio if rule == "linear" else math.sqrt(ratio))


def plan(
    per_device: int, accumulate: int, devices: int, nodes: int, base_lr: float, rule: str = "none", base_batch: int | None = None
) -> BatchPlan:
    """The run's batch arithmetic and effective learning rate."""
    global_batch = per_device * accumulate * devices * nodes
    return BatchPlan(per_device, accumulate, devices, nodes, base_lr, scaled_lr(base_lr, global_batch, base_batch, rule), rule, base_batch)
