"""``NonFiniteLossGuard``: a NaN/Inf loss or gradient stops the run before the update (or skips the step), decided
on the device and read back only at logging steps."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from vit_exp import compat
from vit_exp.errors import NonFiniteLossError
from vit_exp.optim import grad_norm

# Devices without a queue that a host read would stall: the non-fused skip reads its flag there, as putting the
# weights back costs more (vit_micro on the CPU: +3-6 ms a step, against microseconds for the read).
HOST_READ_FREE = ("cpu",)


class _SkipByRestoring:
    """A skipped step for optimizers without a device-side skip: the weights and the optimizer state touched by
    the step are copied before it and put back after it where the flag says so (``torch.where``: exact). A state
    the step itself created is set to zeros, which is the fresh state of Adam(W) and the step counters. (A step
    counter that a non-fused optimizer keeps on the host while the weights are on an accelerator is left alone:
    putting it back would make the host wait; fused optimizers, the default on CUDA, take theirs back.)"""

    def __init__(self, optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
        self.skip = skip
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.saved = [p.detach().clone() for p in self.params]
        self.states = [{k: v.clone() for k, v in optimizer.state.get(p, {}).items() if torch.is_tensor(v)} for p in self.params]

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for p, saved, states in zip(self.params, self.saved, self.states):
                p.copy_(torch.where(self.skip, saved, p))
                for key, value in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.device == self.skip.device:  # not host-side step counters
                        before = states.get(key, torch.zeros((), dtype=value.dtype, device=value.device))
                        value.copy_(torch.where(self.skip, before, value))


class NonFiniteLossGuard(pl.Callback):
    """Stop the run, or skip the update, when the loss or the gradients are NaN or infinite.

    Decided after backward and before the optimizer step, from the gradient norm that clipping uses
    (``vit_exp.optim.grad_norm``, computed once), on the device: a non-finite step becomes a no-op update (the
    fused optimizers skip it themselves; others are put back, ``_SkipByRestoring``) without the host waiting for
    the device. The host reads the outcome only at Lightning's logging steps, at the end of each epoch and before
    any checkpoint is written, and then warns about skipped steps or raises, naming the step where it happened.
    After a stop is decided, later updates are skipped too, so the weights and the checkpoints keep the last good
    state. Ranks agree (a one-number all-reduce on the device). With fp16 and its gradient scaler, whose business
    non-finite gradients are (it skips those steps itself), only the loss is checked.

    Args:
        action: "stop": raise ``NonFiniteLossError``; "skip": drop this step's update and go on.
        max_consecutive_skips: With "skip", stop after this many non-finite steps in a row (the run has diverged).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0  # steps skipped in this process, in total, as last read from the device
        self._loss: torch.Tensor | None = None
        self._tally: dict[str, torch.Tensor] = {}
        self._restore: _SkipByRestoring | None = None
        self._hooks: list[Any] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def full(value: float, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.full((), value, dtype=dtype, device=pl_module.device)

        # Device-side counters: the step being taken, skips, the run of skips, where the run stops, the last skip.
        self._tally = {
            "step": full(trainer.global_step),
            "skipped": full(self.skipped),
            "in_a_row": full(0),
            "stop_step": full(-1),
            "stop_loss": full(0.0, torch.float32),
            "last_step": full(-1),
            "last_loss": full(0.0, torch.float32),
        }
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        compat.set_skip_flag(optimizer, None)
        if self._restore is not None:
            self._restore.restore(optimizer)
            self._restore = None

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._loss is None or not self._tally:
            return
        loss = self._loss.float()
        bad = ~torch.isfinite(loss)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        norm = grad_norm(optimizer, trainer.global_step) if scaler is None else None
        if norm is not None:  # a NaN or Inf in any gradient makes the norm non-finite
            bad = bad | ~torch.isfinite(norm.to(bad.device))
        if trainer.world_size > 1:  # on the device: the host does not wait
            bad = trainer.strategy.reduce(bad.int(), reduce_op="sum") > 0
        t = self._tally
        reads_free = bad.device.type in HOST_READ_FREE and not compat.skips_on_device(optimizer)
        if reads_free and not bool(bad | (t["stop_step"] >= 0)):  # the flag is read below anyway: read it first
            t["in_a_row"].zero_()  # a good step: of the tally's updates below, only these two change anything
            t["step"] += 1
            return
        limit = 0 if self.action == "stop" else self.max_consecutive_skips
        t["in_a_row"] = torch.where(bad, t["in_a_row"] + 1, 0)
        stops_now = (t["in_a_row"] > limit) & (t["stop_step"] < 0)
        t["stop_step"] = torch.where(stops_now, t["step"], t["stop_step"])
        t["stop_loss"] = torch.where(stops_now, loss, t["stop_loss"])
        stopped = t["stop_step"] >= 0
        skipped_now = bad & ~stopped
        t["skipped"] = t["skipped"] + skipped_now.long()
        t["last_step"] = torch.where(skipped_now, t["step"], t["last_step"])
        t["last_loss"] = torch.where(skipped_now, loss, t["last_loss"])
        t["step"] = t["step"] + 1
        if scaler is not None:
            return  # the scaler skips non-finite steps; a stop is raised at the next read
        skip = bad | stopped
        if compat.skips_on_device(optimizer):
            compat.set_skip_flag(optimizer, skip.float())
        elif reads_free:
            if bool(skip):
                optimizer.zero_grad(set_to_none=True)  # no gradients: the optimizer leaves weights and moments alone
        else:
            self._restore = _SkipByRestoring(optimizer, skip)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if compat.is_logging_step(trainer):
            self.check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)  # before a checkpoint is written: raising keeps the last good one

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self.check(trainer)
        self._tally = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._tally = {}

    def check(self, trainer: pl.Trainer) -> None:
        """Read the device's tally (one transfer): warn about steps skipped since the last check, raise on a stop.

        Raises:
            NonFiniteLossError: a non-finite step with action "stop", or too many skipped in a row.
        """
        if not self._tally:
            return
        keys = ("skipped", "stop_step", "stop_loss", "last_step", "last_loss")
        skipped, stop_step, stop_loss, last_step, last_loss = torch.stack(
            [self._tally[k].double() for k in keys]
        ).tolist()
        epoch = trainer.current_epoch  # checks run at every epoch end: the steps since the last one are in this epoch
        if skipped > self.skipped:
            self.skipped = int(skipped)
            rank_zero_warn(
                f"the training loss is {last_loss} at step {int(last_step)} (epoch {epoch}) (or a gradient is not "
                f"finite): skipped this update ({self.skipped} so far)"
            )
        if stop_step < 0:
            return
        kept = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        kept_text = ", ".join(p for p in kept if p) or "no checkpoint yet"
        reason = f"{self.max_consecutive_skips} updates in a row were skipped; " if self.action == "skip" else ""
        raise NonFiniteLossError(
            f"the training loss is {stop_loss} at step {int(stop_step)} (epoch {epoch}) (or a gradient is not "
            f"finite); {reason}the run stops before this update, and the last good state is in: {kept_text}. Lower "
            "optim.lr, lengthen sched.warmup_steps, check the data, or set callbacks.nan_guard.action=skip to skip "
            "such steps"
        )
