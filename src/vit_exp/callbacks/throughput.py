"""``Throughput``: training images per second over the whole fit (``results.json``'s ``images_per_s``)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class Throughput(pl.Callback):
    """Training images per second over the whole fit, loading included, validation excluded.

    The count is per process times the world size, i.e. the global rate under DDP.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._since: float | None = None

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds else None

    def _restart(self, *_: Any) -> None:
        self._since = time.perf_counter()

    on_train_epoch_start = _restart
    on_validation_end = _restart  # a validation in the middle of an epoch does not count as training

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._since is not None:
            self.seconds += now - self._since
            self.images += len(batch[0]) * trainer.world_size
        self._since = now
