"""``BestCheckpoint``: Lightning's ``ModelCheckpoint`` where a tie goes to the later checkpoint."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` keeping the best by its monitor, where a tie goes to the later checkpoint.

    Accuracy on a small validation set moves in steps of 1/N and plateaus; Lightning keeps the first
    checkpoint of a plateau, this keeps the last, trained longest (and, under a decaying schedule, better).
    """

    def check_monitor_top_k(self, trainer: pl.Trainer, current: torch.Tensor | None = None) -> bool:
        tie = current is not None and self.save_top_k == 1 and bool(self.best_k_models)
        if tie and bool(current == self.best_k_models[self.kth_best_model_path]):
            return trainer.strategy.reduce_boolean_decision(True)
        return super().check_monitor_top_k(trainer, current)
