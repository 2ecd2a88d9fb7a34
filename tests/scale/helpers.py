"""Callbacks that tests add to a run through the config (``+callbacks.NAME._target_=tests.scale.helpers.X``)."""

from __future__ import annotations

import json
import os
import signal
import time
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


class CrashOnRank(pl.Callback):
    """Raise on one rank only when the training step ``step`` starts (a bug or a bad record on that rank); the
    other ranks first stall for ``others_stall_s`` (a slow step), so that they meet the dead rank late."""

    def __init__(self, rank: int, step: int, others_stall_s: float = 0.0) -> None:
        self.rank, self.step, self.others_stall_s = rank, step, others_stall_s

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self.step:
            return
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"crash on rank {self.rank} at step {self.step}")
        time.sleep(self.others_stall_s)


class RecordTargets(pl.Callback):
    """Append each training batch's targets to ``path`` as a JSON line {"step", "rank", "pid", "targets", "images" (a checksum)}, flushed at
    once (a SIGKILLed run keeps what it trained on)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        line = {"step": trainer.global_step, "rank": trainer.global_rank, "pid": os.getpid(), "targets": batch[1].tolist(),
                "images": float(batch[0].double().sum())}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class GcState(pl.Callback):
    """Write the garbage collector's state at the first training step to ``path`` as JSON: {"enabled", "frozen"}."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        import gc

        with open(self.path, "w") as f:
            json.dump({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}, f)
