"""``NonFiniteLossGuard``: a NaN/Inf loss or gradient stops the run before the update (or skips the step)."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from vit_exp import compat
from vit_exp.callbacks.sync import host_read_due
from vit_exp.errors import NonFiniteLossError


class NonFiniteLossGuard(pl.Callback):
    """Stop the run, or skip the update, when the loss or the gradients are NaN or infinite.

    Checked after backward and before the optimizer step, so the weights never take a non-finite update and the
    checkpoints already written keep the last good state. Ranks agree on the decision (sharded gradients differ
    per rank). With fp16 and its gradient scaler, whose business non-finite gradients are (it skips those steps
    itself), only the loss is checked.

    Args:
        action: "stop": raise ``NonFiniteLossError``; "skip": drop this step's gradients and go on.
        max_consecutive_skips: With "skip", stop after this many non-finite steps in a row (the run has diverged).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0  # steps skipped in this process, in total
        self._in_a_row = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not host_read_due(trainer) or self._loss is None:
            return
        finite = torch.isfinite(self._loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            norms = compat.foreach_norm(grads)  # one fused kernel; a NaN or Inf anywhere makes its norm non-finite
            finite = finite & torch.isfinite(torch.stack([n.to(finite.device) for n in norms]).sum())
        if not trainer.strategy.reduce_boolean_decision(not bool(finite), all=False):
            self._in_a_row = 0
            return
        where = (
            f"the training loss is {self._loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch})"
        )
        if self.action == "skip" and self._in_a_row < self.max_consecutive_skips:
            optimizer.zero_grad(set_to_none=True)  # no gradients: the optimizer leaves weights and moments alone
            self.skipped += 1
            self._in_a_row += 1
            rank_zero_warn(f"{where} (or a gradient is not finite): skipped this update ({self.skipped} so far)")
            return
        kept = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        kept_text = ", ".join(p for p in kept if p) or "no checkpoint yet"
        reason = f"{self.max_consecutive_skips} updates in a row were skipped; " if self.action == "skip" else ""
        raise NonFiniteLossError(
            f"{where} (or a gradient is not finite); {reason}the run stops before this update, and the last good "
            f"state is in: {kept_text}. Lower optim.lr, lengthen sched.warmup_steps, check the data, or set "
            "callbacks.nan_guard.action=skip to skip such steps"
        )
