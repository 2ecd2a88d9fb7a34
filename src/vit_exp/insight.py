"""Looking into a model while it trains, as callbacks: few-shot accuracy, attention maps, run figures.

``FewShotEval``    ridge few-shot top-1 of the frozen features every N steps (``vit_exp.fewshot``), to every logger.
``AttentionImages`` class-token attention and rollout of a few validation images, with the predictions, to
                   the loggers that take images (W&B, TensorBoard).
``RunPlots``       ``curves.png`` (loss, learning rate, top-1) at the end of training and ``confusion_matrix.png``
                   after the test, in the run directory.

Choose them with ``callbacks=insight`` (``conf/callbacks/insight.yaml``); ``RunPlots`` is in the default set.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from vit_exp import plots
from vit_exp.fewshot import DEFAULT_L2, DEFAULT_SEEDS, DEFAULT_SHOTS, extract_features, fewshot_accuracy

log = logging.getLogger(__name__)



def fewshot_metric(shots: int) -> str:
    """The logged name of the k-shot accuracy, e.g. ``fewshot/10shot``."""
    return f"fewshot/{shots}shot"


def class_names(datamodule: Any, num_classes: int | None = None) -> list[str]:
    """The data's class names where its source has them, else the class indices as text."""
    names = getattr(getattr(datamodule, "source", None), "class_names", None)
    if names:
        return list(names)
    n = num_classes if num_classes is not None else getattr(datamodule, "num_classes", 0)
    return [str(i) for i in range(n)]


def _subset(dataset: Dataset, max_images: int | None, seed: int) -> Dataset:
    """At most ``max_images`` of a map-style dataset, drawn at random (class folders are listed in order)."""
    if max_images is None or isinstance(dataset, IterableDataset) or len(dataset) <= max_images:
        return dataset
    g = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=g)[:max_images].sort().values.tolist())


def eval_batches(
    datamodule: Any, split: str, device: torch.device | str, max_images: int | None = None, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images ready for the model, labels) of a split, through the data's *evaluation* preprocessing.

    A ``ViTDataModule`` (anything with ``source``, ``eval_transform``, ``mean`` and ``std``) gives the split
    without augmentation, even for "train". Any other LightningDataModule gives its ``<split>_dataloader()``
    as it is, batches moved to ``device`` and passed through its ``on_after_batch_transfer``.
    """
    from vit_exp.data.transforms import normalize

    if all(hasattr(datamodule, a) for a in ("source", "eval_transform", "mean", "std")):
        dataset = _subset(datamodule.source.dataset(split, datamodule.eval_transform), max_images, seed)
        loader = DataLoader(
            dataset, batch_size=getattr(datamodule, "eval_batch_size", 256), num_workers=datamodule.num_workers
        )
        batches = ((normalize(x.to(device), datamodule.mean, datamodule.std), y) for x, y in loader)
    else:
        make_loader = getattr(datamodule, f"{split}_dataloader", None)
        if make_loader is None:
            raise ValueError(f"{type(datamodule).__name__} has no {split}_dataloader(); choose another split")
        batches = (datamodule.on_after_batch_transfer([t.to(device) for t in b[:2]], 0) for b in make_loader())
    seen = 0  # a stream (IterableDataset) is cut here rather than subsampled
    for x, y in batches:
        yield x, y
        seen += len(y)
        if max_images is not None and seen >= max_images:
            return


def fewshot_eval(
    model: nn.Module,
    datamodule: Any,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    l2_reg: float = DEFAULT_L2,
    train_split: str = "train",
    test_split: str = "val",
    max_images: int | None = None,
    device: torch.device | str | None = None,
    context: Any = None,
) -> dict[int, float]:
    """Few-shot top-1 (0..1) of ``model``'s frozen pre-logit features on a classification data module.

    The k shots per class are drawn (once per seed) from ``train_split``; the accuracy is measured on all of
    ``test_split`` (at most ``max_images`` of each split, drawn at random, when given).

    Args:
        model: A ``vit_exp.models`` ViT (anything with ``forward_features`` and ``forward_head``).
        datamodule: A ``ViTDataModule``, or any LightningDataModule yielding (images, integer labels).
        context: A context manager factory to run the forward passes in (e.g. the trainer's precision);
            None: plain float.

    Raises:
        ValueError: the data is multi-label (few-shot ridge needs one class per image).
    """
    if getattr(datamodule, "multi_label", False):
        raise ValueError("few-shot evaluation needs single-label data; this data module is multi-label")
    device = device if device is not None else next(model.parameters()).device
    with context() if context else nullcontext():
        train = extract_features(model, eval_batches(datamodule, train_split, device, max_images), device)
        test = extract_features(model, eval_batches(datamodule, test_split, device, max_images), device)
    result = fewshot_accuracy(*train, *test, shots=shots, seeds=seeds, l2_reg=l2_reg)
    skipped = sorted(set(shots) - set(result))
    if skipped:
        log.warning(
            "few-shot: skipped %s shots: a class of the %s split has fewer images (raise max_images?)",
            skipped,
            train_split,
        )
    return result


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
        accuracy = fewshot_eval(
            model, trainer.datamodule, device=pl_module.device, context=trainer.precision_plugin.forward_context,
            **self.kwargs,
        )  # fmt: skip
        self.history[step] = accuracy
        self.latest = {fewshot_metric(k): v for k, v in accuracy.items()}
        for logger in trainer.loggers:
            logger.log_metrics(self.latest, step=step)
        log.info("step %d: few-shot top-1 %s", step, {k: f"{100 * v:.1f}%" for k, v in self.latest.items()})

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._evaluate(trainer, pl_module)


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
