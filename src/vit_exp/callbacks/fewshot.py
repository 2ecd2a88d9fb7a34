"""``FewShotEval``: few-shot top-1 of the frozen features when training starts, every N steps and at the end,
to every logger (``vit_exp.fewshot_eval``); under DDP the ranks share the work."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from vit_exp.fewshot import DEFAULT_L2, DEFAULT_SEEDS, DEFAULT_SHOTS
from vit_exp.fewshot_eval import fewshot_eval, fewshot_metric

log = logging.getLogger(__name__)


class FewShotEval(pl.Callback):
    """Few-shot linear evaluation (ViT paper, section 4.1) when training starts (the initial or pretrained
    features: the baseline), every ``every_n_steps`` optimizer steps, and when training ends.

    Logs ``fewshot/<k>shot`` (top-1, 0..1) to every logger at the global step; the latest values are kept
    in ``latest`` and all of them in ``history`` ({step: {k: accuracy}}).

    Args:
        every_n_steps: Optimizer steps between evaluations (0: only at the start and the end of training).
        shots: Examples per class.
        seeds: Draws of the shots; the accuracy is their mean.
        l2_reg: Ridge penalty.
        train_split: Where the shots come from.
        test_split: Where the accuracy is measured (keep the test split held out: "val").
        max_images: At most this many images of each split, drawn at random (None: all; set it for big data).
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        shots: Sequence[int] = DEFAULT_SHOTS,
        seeds: Sequence[int] = DEFAULT_SEEDS,
        l2_reg: float = DEFAULT_L2,
        train_split: str = "train",
        test_split: str = "val",
        max_images: int | None = None,
    ) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0 (0: only at the start and the end), got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.kwargs = {
            "shots": tuple(shots),
            "seeds": tuple(seeds),
            "l2_reg": l2_reg,
            "train_split": train_split,
            "test_split": test_split,
            "max_images": max_images,
        }
        self.history: dict[int, dict[int, float]] = {}
        self.latest: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.datamodule is None:
            warnings.warn("FewShotEval needs the data as a LightningDataModule (fit(datamodule=...)); it is off")
            self.every_n_steps = -1
        elif getattr(trainer.datamodule, "multi_label", False):
            warnings.warn("few-shot evaluation needs single-label data; FewShotEval is off for this multi-label data")
            self.every_n_steps = -1

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if self.every_n_steps < 0 or step in self.history or trainer.sanity_checking:
            return
        model = getattr(pl_module, "model", pl_module)
        # Every rank takes part (FSDP's forward is a collective) and extracts its share of the images.
        accuracy = fewshot_eval(
            model, trainer.datamodule, device=pl_module.device, context=trainer.precision_plugin.forward_context,
            rank=trainer.global_rank, world_size=trainer.world_size, gather=pl_module.all_gather, **self.kwargs,
        )  # fmt: skip
        self.history[step] = accuracy
        self.latest = {fewshot_metric(k): v for k, v in accuracy.items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.latest, step=step)
        if trainer.is_global_zero:
            log.info("step %d: few-shot top-1 %s", step, {k: f"{100 * v:.1f}%" for k, v in self.latest.items()})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluate(trainer, pl_module)
