"""``ExactResume``: what Lightning leaves out of a resume (the random generators, the hand-over of the train
loader's position), so that a run killed mid-epoch and resumed ends bit for bit where an uninterrupted one does.
The train order itself is ``vit_exp.data.order``."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from vit_exp import compat


class ExactResume(pl.Callback):
    """What Lightning leaves out of a resume, so that a resumed run continues exactly as if never stopped.

    1. The random generators (torch, numpy, python, CUDA): saved in checkpoints and restored, for dropout,
       drop-path and random augmentation.
    2. The train loader's position: Lightning hands a stateful loader its saved state only when it loads the
       train data after restoring the loop state; ``configure_optimizers`` asking for
       ``trainer.estimated_stepping_batches`` (the schedule's length) loads the data before that, and the
       saved position would be dropped. It is handed over here, before the first batch is drawn.
    """

    KEY = "rng_states"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = compat.collect_rng_states()
        # numpy's state as a tensor and plain values: the checkpoint still loads with weights_only=True
        name, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
        checkpoint[self.KEY] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.KEY in checkpoint:
            states = dict(checkpoint[self.KEY])
            name, keys, pos, has_gauss, cached = states["numpy"]
            states["numpy"] = (name, keys.numpy().astype("uint32"), pos, has_gauss, cached)
            compat.set_rng_states(states)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        compat.hand_over_loader_states(trainer)  # if not yet handed over (see above)
