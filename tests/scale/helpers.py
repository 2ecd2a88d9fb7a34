"""Callbacks that tests add to a run through the config (``+callbacks.NAME._target_=tests.scale.helpers.X``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl


class SignalAtStep(pl.Callback):
    """Send this process ``signum`` (a name, e.g. "SIGTERM") when the training step ``step`` starts."""

    def __init__(self, step: int, signum: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signum)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)


class NaNBatch(pl.Callback):
    """Make the images of the batches at the given global steps NaN (a corrupt record), so their loss is NaN."""

    def __init__(self, steps: Sequence[int]) -> None:
        self.steps = set(steps)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.steps:
            batch[0].fill_(float("nan"))
