"""When a per-step check may read a value from the device: every step, but on XLA only at logging steps."""

from __future__ import annotations

import lightning.pytorch as pl


def host_read_due(trainer: pl.Trainer) -> bool:
    """Whether a per-step check that syncs with the host runs at this step: every step, but on XLA (TPU), where
    a host sync inside the step breaks the lazy graph, only at the steps where Lightning logs (and syncs) anyway."""
    from lightning.pytorch.accelerators import XLAAccelerator

    if not isinstance(trainer.accelerator, XLAAccelerator):
        return True
    return trainer.global_step % max(1, trainer.log_every_n_steps) == 0
