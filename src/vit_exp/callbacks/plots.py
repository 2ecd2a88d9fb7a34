"""``RunPlots``: ``curves.png`` when fitting ends and ``confusion_matrix.png`` after the test, in the run directory
(drawn by ``vit_exp.plots``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from vit_exp import plots
from vit_exp.callbacks.images import class_names, log_images

log = logging.getLogger(__name__)


class RunPlots(pl.Callback):
    """``curves.png`` (from the CSV logger's ``metrics.csv``) when fitting ends, and
    ``confusion_matrix.png`` after the test when the data has at most ``max_classes`` classes.

    The confusion matrix is also logged to the loggers that take images.

    Args:
        dirpath: Where the PNGs go; None: the CSV logger's directory (the run directory).
        max_classes: Largest number of classes for which a confusion matrix is drawn.
    """

    def __init__(self, dirpath: str | Path | None = None, max_classes: int = plots.MAX_CONFUSION_CLASSES) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.max_classes = min(max_classes, plots.MAX_CONFUSION_CLASSES)
        self.written: list[Path] = []
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def _csv_logger(self, trainer: pl.Trainer) -> Any:
        from lightning.pytorch.loggers import CSVLogger

        return next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)

    def _dir(self, trainer: pl.Trainer) -> Path:
        csv_logger = self._csv_logger(trainer)
        path = self.dirpath or Path(csv_logger.log_dir if csv_logger else trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end: after every callback's on_train_end, which may still log (FewShotEval's last evaluation)
        csv_logger = self._csv_logger(trainer)
        if csv_logger is None:
            log.info("RunPlots: no CSV logger, so no metrics.csv to draw the training curves from")
            return
        csv_logger.save()  # the rows still in memory
        metrics = Path(csv_logger.log_dir) / "metrics.csv"
        if metrics.is_file():
            self._save(plots.plot_training_curves(metrics), self._dir(trainer) / plots.CURVES_FILE)

    def _save(self, fig: Any, path: Path) -> None:
        fig.savefig(path, dpi=100)
        self.written.append(path)
        log.info("wrote %s", path)

    @staticmethod
    def _num_classes(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        return pl_module.hparams.get("num_classes") or getattr(trainer.datamodule, "num_classes", 0)

    def _wanted(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        multi_label = pl_module.hparams.get("multi_label") or getattr(trainer.datamodule, "multi_label", False)
        return not multi_label and 0 < self._num_classes(trainer, pl_module) <= self.max_classes

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._preds, self._targets = [], []

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if not self._wanted(trainer, pl_module):
            return
        x, y = batch[0], batch[1]
        logits = outputs if isinstance(outputs, torch.Tensor) else None
        if logits is None:  # a module whose test_step returns nothing: one more forward pass
            with torch.no_grad():
                logits = pl_module(x)
        self._preds.append(logits.argmax(dim=-1).detach())
        self._targets.append(y.detach())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._preds:
            return
        n = self._num_classes(trainer, pl_module)
        matrix = plots.confusion_matrix(torch.cat(self._preds), torch.cat(self._targets), n)
        matrix = pl_module.all_gather(matrix)
        matrix = (matrix.sum(0) if matrix.ndim == 3 else matrix).cpu()  # summed over processes
        if trainer.is_global_zero:
            fig = plots.plot_confusion_matrix(matrix, class_names(trainer.datamodule, n))
            self._save(fig, self._dir(trainer) / plots.CONFUSION_FILE)
            log_images(trainer, "confusion_matrix", [plots.figure_to_array(fig)], [fig.axes[0].get_title()])
        self._preds, self._targets = [], []
