"""``BestCheckpoint``: Lightning's ``ModelCheckpoint`` where a tie goes to the later checkpoint, compared on the host."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the best by its monitor, where a tie goes to the later checkpoint.

    Accuracy on a small validation set moves in steps of 1/N and plateaus; Lightning keeps the first
    checkpoint of a plateau, this keeps the last, trained longest (and, under a decaying schedule, better).

    The monitored values are compared on the CPU: read once per save (Lightning reads them for the checkpoint's
    file name and state anyway), where on an XLA device each comparison of the best, the ties and the top-k would
    trace and compile graphs of its own, new ones in later epochs as the kept scores change.
    """

    # Private in Lightning 2.6 (the one place the monitored values are gathered); tests/scale/test_compat.py holds it.
    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, Any]:
        candidates = super()._monitor_candidates(trainer)
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in candidates.items()}

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        tie = current is not None and self.save_top_k == 1 and bool(self.best_k_models)
        if tie and bool(current == self.best_k_models[self.kth_best_model_path]):
            return trainer.strategy.reduce_boolean_decision(True)
        return super().check_monitor_top_k(trainer, current)
