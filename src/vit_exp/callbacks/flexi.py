"""``FlexiPatchSizes``: FlexiViT's patch-size randomisation, one size per training step (Beyer et al. 2023).

The size of a step is a function of (seed, global step) alone (``draw_patch_size``): every DDP rank draws the same,
and a resumed run draws what the uninterrupted one would have. Validation, test and the end of training run at the
model's evaluation size (``model.flexi.eval_patch_size``). Under ``torch.compile`` each size is one graph, so the
number of graphs dynamo keeps per function is raised to the number of sizes while fitting.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl

from vit_exp.compat import compiled_graphs_per_function
from vit_exp.models.flexi import PatchSizes, patch_sizes_of


def draw_patch_size(patch_sizes: Sequence[int], seed: int, step: int) -> int:
    """The patch size of optimizer step ``step``: uniform over ``patch_sizes`` (big_vision's default weights).

    Micro-batches of one step (gradient accumulation) share it, as big_vision's whole global batch does.
    """
    return random.Random(f"flexi/{seed}/{step}").choice(list(patch_sizes))  # str seeds hash the same in any process


class FlexiPatchSizes(pl.Callback):
    """Set the backbone's patch size before every training batch; the evaluation size around validation and test.

    A no-op for a model built without ``model.flexi.patch_sizes``.

    Args:
        seed: The run's seed (``${seed}``); null counts as 0.
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed or 0
        self._limits = contextlib.ExitStack()

    @staticmethod
    def _sizes(pl_module: pl.LightningModule) -> PatchSizes | None:
        sizes = patch_sizes_of(getattr(pl_module, "model", pl_module))
        return sizes if sizes is not None and sizes.patch_sizes else None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        sizes = self._sizes(pl_module)
        if sizes is not None and stage == "fit" and getattr(pl_module.hparams, "compile", False):
            self._limits.enter_context(compiled_graphs_per_function(len({*sizes.patch_sizes, sizes.eval_patch_size})))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._limits.close()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        sizes = self._sizes(pl_module)
        if sizes is not None:
            sizes.set(draw_patch_size(sizes.patch_sizes, self.seed, trainer.global_step))

    def _evaluation_size(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sizes = self._sizes(pl_module)
        if sizes is not None:
            sizes.set(sizes.eval_patch_size)

    on_validation_start = _evaluation_size
    on_test_start = _evaluation_size
    on_predict_start = _evaluation_size
    on_train_end = _evaluation_size  # the model a run hands on (test, results) is at the evaluation size
