"""Images to the loggers that take them (W&B, TensorBoard), and the class names they are captioned with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


def class_names(datamodule: Any, num_classes: int | None = None) -> list[str]:
    """The data's class names where its source has them, else the class indices as text."""
    names = getattr(getattr(datamodule, "source", None), "class_names", None)
    if names:
        return list(names)
    n = num_classes if num_classes is not None else getattr(datamodule, "num_classes", 0)
    return [str(i) for i in range(n)]


def image_loggers(trainer: pl.Trainer) -> list[Any]:
    """The trainer's loggers that take images: W&B (``log_image``) and TensorBoard."""
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger) or hasattr(lg, "log_image")]


def log_images(trainer: pl.Trainer, key: str, images: Sequence[np.ndarray], captions: Sequence[str]) -> None:
    """Log (H, W, 3) uint8 images with captions to every logger that takes images, at the global step.

    W&B gets one panel ``key`` with captioned images (``wandb.Image``); TensorBoard gets ``key/<i>`` images
    (it has no captions: draw them into the image) and the captions as text.
    """
    step = trainer.global_step
    for logger in image_loggers(trainer):
        if isinstance(logger, TensorBoardLogger):
            for i, (image, caption) in enumerate(zip(images, captions)):
                logger.experiment.add_image(f"{key}/{i}", image, step, dataformats="HWC")
                logger.experiment.add_text(f"{key}/{i}", caption, step)
        else:
            logger.log_image(key=key, images=list(images), step=step, caption=list(captions))
