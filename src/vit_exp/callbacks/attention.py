"""``AttentionImages``: class-token attention and rollout of a few validation images, with the predictions, to the
loggers that take images; ``attention_figures`` draws them (also for notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from vit_exp import plots
from vit_exp.callbacks.images import class_names, image_loggers, log_images


def _display_images(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """Normalised model inputs (B, 3, H, W) back to displayable (B, H, W, 3) floats in [0, 1]."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    else:  # unknown normalisation: stretch each image to [0, 1]
        lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-8)
    return x.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def caption(probs: torch.Tensor, names: Sequence[str], target: int | None = None) -> str:
    """'pred cat (87%), true cat' for one image's class probabilities."""
    p, k = probs.max(dim=-1)
    text = f"pred {names[int(k)]} ({100 * float(p):.0f}%)"
    return text if target is None else f"{text}, true {names[target]}"


def attention_figures(
    model: nn.Module,
    x: torch.Tensor,
    names: Sequence[str],
    targets: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    heads: bool = True,
) -> tuple[list[Any], list[str]]:
    """One figure per image: the input, the attention rollout and (``heads``) each last-layer head's
    class-token attention, titled with the prediction. Returns (figures, captions)."""
    from vit_exp.attention import attention_rollout, cls_attention, draw_attention

    was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = model(x).float().softmax(dim=-1)
        maps = attention_rollout(model, x)[:, None]  # (B, 1, gh, gw)
        if heads:
            maps = torch.cat([maps, cls_attention(model, x)], dim=1)  # (B, 1 + heads, gh, gw)
    model.train(was_training)
    images = _display_images(x, mean, std)
    titles = ["rollout"] + [f"head {h}" for h in range(maps.shape[1] - 1)]
    figures, captions = [], []
    for i in range(len(x)):
        text = caption(probs[i], names, None if targets is None else int(targets[i]))
        fig = draw_attention(images[i], maps[i], titles=titles)
        fig.suptitle(text, fontsize="small")
        fig.tight_layout()
        figures.append(fig)
        captions.append(text)
    return figures, captions


class AttentionImages(pl.Callback):
    """Attention maps of the first ``num_images`` validation images, logged as images with the predictions
    in the caption, every ``every_n_epochs`` validation epochs, when some logger takes images.

    Each image: the input, the attention rollout over all blocks, and each head's last-layer class-token
    attention (``vit_exp.attention``).

    Args:
        num_images: Validation images to show (the same ones every time: the first of the first batch).
        every_n_epochs: Validation epochs between two logs.
        heads: Also show each head of the last block, not only the rollout.
        key: The name the images are logged under.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, heads: bool = True, key: str = "attention"):
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(f"num_images and every_n_epochs must be >= 1, got {num_images} and {every_n_epochs}")
        self.num_images, self.every_n_epochs, self.heads, self.key = num_images, every_n_epochs, heads, key
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._epochs = 0
        self.logged = 0  # images logged so far

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if batch_idx == 0 and dataloader_idx == 0 and not trainer.sanity_checking:
            x, y = batch[0][: self.num_images], batch[1][: self.num_images]
            self._batch = (x.detach(), y.detach())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None or not image_loggers(trainer):
            return
        self._epochs += 1
        if (self._epochs - 1) % self.every_n_epochs:
            return
        x, y = self._batch
        dm = trainer.datamodule
        model = getattr(pl_module, "model", pl_module)
        targets = None if y.ndim > 1 else y.tolist()  # multi-hot targets have no single true class
        with trainer.precision_plugin.forward_context():
            figures, captions = attention_figures(
                model, x, class_names(dm, pl_module.hparams.get("num_classes")), targets,
                getattr(dm, "mean", None), getattr(dm, "std", None), self.heads,
            )  # fmt: skip
        import matplotlib.pyplot as plt  # draw_attention's figures are pyplot's: release them

        log_images(trainer, self.key, [plots.figure_to_array(f) for f in figures], captions)
        for fig in figures:
            plt.close(fig)
        self.logged += len(figures)
