"""The LightningModule: a ``vit_exp.models`` backbone with its loss, metrics, optimizer and schedule."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MultilabelAveragePrecision

from vit_exp import compat
from vit_exp.data.mixup import MixupCutmix
from vit_exp.errors import ConfigError
from vit_exp.optim import build_optimizer, grad_norm, param_groups, scale_lrs

if TYPE_CHECKING:
    from vit_exp.distill import Distillation

TOP_K = (1, 5)  # logged as "{stage}/top1", "{stage}/top5" for stage in val, test
MONITOR = "val/top1"  # what the best checkpoint is chosen by (conf/callbacks refers to it by name)

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]  # params -> optimizer (a `_partial_` from conf/optim)
Schedule = Callable[..., float]  # (step, total_steps=...) -> lr multiplier (a `_partial_` from conf/sched)


class MultilabelTopKHit(torchmetrics.Metric):
    """Share of images whose k highest-scoring classes include a true label (precision@1 for k=1).

    For one-hot targets this is top-k accuracy. Sums are reduced across processes, so it is exact under DDP.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        # Integer counts: exact at any size, and untouched when a bf16-true run converts the module's floats.
        self.add_state("hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        top = logits.topk(self.top_k, dim=-1).indices  # (B, k)
        self.hits += (target.gather(-1, top) > 0).any(dim=-1).sum()
        self.total += target.shape[0]

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.total.clamp(min=1).float()


def _float32(target: torch.Tensor) -> torch.Tensor:
    """Soft or multi-hot targets in float32 (bf16 after Mixup in a bf16-true run); class ids as they are."""
    return target.float() if target.is_floating_point() else target


class ViTModule(pl.LightningModule):
    """Image classification with a ViT. ``train.py`` builds it from the ``module:`` node of ``conf/train.yaml``
    (``vit_exp.build.build_module``), which carries the loss, optimizer, schedule, mixup and compile settings.

    Args:
        backbone: The network, e.g. ``vit_exp.models.create_model(...)``; kept as ``self.model`` so that
            checkpoints load back with ``vit_exp.models.load_checkpoint``.
        num_classes: Classes of the data (and of the head).
        multi_label: Multi-hot float targets and a sigmoid cross-entropy (JFT-style pretraining);
            otherwise integer targets and a softmax cross-entropy.
        label_smoothing: Softmax cross-entropy label smoothing.
        optimizer: ``params -> Optimizer``; weight decay applies to ``param_groups``'s first group only.
        scheduler: ``(step, total_steps=...) -> multiplier``, stepped every optimizer step; None: constant.
        compile: ``torch.compile`` the backbone.
        config: The run's resolved config, stored in checkpoints so that ``eval.py`` can rebuild the model.
        class_names: The data's class names, stored in checkpoints so that ``predict.py`` can name predictions.
        mixup: Arguments of ``vit_exp.data.mixup.MixupCutmix`` (mixup_alpha, cutmix_alpha, prob, switch_prob)
            for training batches; None trains on the batches as they are.
        layer_decay: Layer-wise lr decay (``optim.layer_decay``, e.g. 0.65): each layer's lr is ``layer_decay``
            times the one above it (``vit_exp.optim.param_groups``); None: one lr for all.
        distillation: A frozen teacher and DeiT's loss (``vit_exp.distill``); a distilled backbone then returns
            both heads' logits in training. None trains on the labels alone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        multi_label: bool = False,
        label_smoothing: float = 0.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: Schedule | None = None,
        compile: bool = False,
        config: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        mixup: dict[str, float] | None = None,
        layer_decay: float | None = None,
        distillation: Distillation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "distillation"])
        self.model = backbone
        self.optimizer_factory = optimizer
        self.schedule = scheduler
        if multi_label:
            if label_smoothing:
                warnings.warn("label_smoothing is ignored with multi-label (sigmoid) targets", stacklevel=2)
            self.criterion: nn.Module = nn.BCEWithLogitsLoss()
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.mixup = MixupCutmix(num_classes, **mixup) if mixup else None
        # A plain attribute, not a submodule: the teacher stays out of state_dict, the optimizer and the EMA.
        self.distillation = distillation
        if distillation is not None:
            if multi_label:
                raise ConfigError("distill: DeiT's distillation losses are for single-label (softmax) data; this data "
                                  "is multi-label: drop distill=... (or use single-label data)")  # fmt: skip
            if getattr(backbone, "dist_token", None) is not None:
                backbone.set_distilled_training(True)  # training returns (class, distillation) logits
        # One metric object per stage and name: Lightning syncs and resets them at epoch end.
        metrics: dict[str, torchmetrics.Metric] = {}
        for stage in ("val", "test"):
            metrics.update({f"{stage}_top{k}": self._top_k_metric(k) for k in TOP_K})
            if multi_label:  # mean average precision over classes; binned so memory stays flat at 20k classes
                metrics[f"{stage}_mAP"] = MultilabelAveragePrecision(num_classes, average="macro", thresholds=100)
        # the count of a stream's test split, whose length is unknown (a count from the host: no NaN check, no sync)
        metrics["test_images"] = torchmetrics.SumMetric(nan_strategy="disable")
        self.metrics = nn.ModuleDict(metrics)
        self.tested_images: int | None = None  # after a test: the images it read, over all ranks

    def _top_k_metric(self, k: int) -> torchmetrics.Metric:
        k = min(k, self.hparams.num_classes)
        if self.hparams.multi_label:
            return MultilabelTopKHit(k)
        return MulticlassAccuracy(num_classes=self.hparams.num_classes, top_k=k, average="micro")

    def configure_model(self) -> None:
        # Lightning calls this for fit and again for test: compiled once (a second compile() would wrap anew)
        if self.hparams.compile and getattr(self.model, "_compiled_call_impl", None) is None:
            self.model.compile()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output in float32 (a no-op in 32-bit runs): under ``*-true`` half precision (TPUs run
        bf16-true) losses and metrics are still computed and summed in float32."""
        return self(x).float()

    def on_fit_start(self) -> None:
        if self.distillation is not None:
            self.distillation.teacher.to(self.device)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        if self.distillation is not None:
            return self.distillation.loss(self(x), x, _float32(y), self.criterion)
        return self.criterion(self._logits(x), _float32(y))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged after the step and only where Lightning logs: a logged progress-bar value is read by the host at every
        # batch (a GPU stall), and on XLA the step graph stays the same whether it logs or not (no logging ops in it).
        if self._logging_step():
            self.log("train/loss", outputs["loss"], prog_bar=True)

    def _logging_step(self) -> bool:
        try:
            trainer = self.trainer
        except RuntimeError:  # no Trainer (a unit test): self.log warns and does nothing
            return True
        return compat.is_logging_step(trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        compat.forget_step_value(self.trainer, "train/loss")  # logged at an earlier step: not read again

    def on_train_epoch_end(self) -> None:
        # Unreadable images are skipped by the sources (data.strict=false); show how many, so it is not silent.
        skipped = getattr(getattr(self.trainer.datamodule, "source", None), "num_skipped", None)
        if skipped is not None:
            self.log("data/skipped_images", float(skipped), rank_zero_only=True)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits, y = self._logits(x), _float32(y)
        self.log(f"{stage}/loss", self.criterion(logits, y), sync_dist=True)
        for k in TOP_K:
            metric = self.metrics[f"{stage}_top{k}"]
            metric.update(logits, y)
            self.log(f"{stage}/top{k}", metric, prog_bar=k == 1)
        if self.hparams.multi_label:
            self.metrics[f"{stage}_mAP"].update(logits, y.long())
            self.log(f"{stage}/mAP", self.metrics[f"{stage}_mAP"])
        return logits  # to callbacks as `outputs` (vit_exp.callbacks.RunPlots: the confusion matrix)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.metrics["test_images"].update(float(len(batch[1])))  # a host number: no read back from the device
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        count = self.metrics["test_images"]
        self.tested_images = int(count.compute()) if count.update_count else 0  # compute() sums over the ranks
        count.reset()

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("ViTModule was built without an optimizer; pass optimizer= (conf/optim) to train")
        groups = param_groups(self.model, layer_decay=self.hparams.layer_decay)
        optimizer = scale_lrs(build_optimizer(self.optimizer_factory, groups, self.device))
        if self.schedule is None:
            return optimizer
        lr_lambda = partial(self.schedule, total_steps=int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        from lightning.pytorch.plugins.precision import Precision
        from torch.distributed.fsdp import FullyShardedDataParallel

        if gradient_clip_val and isinstance(self.trainer.model, FullyShardedDataParallel):
            # Lightning's FSDP precision refuses norm clipping; FSDP computes the global norm over all shards itself.
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        precision = self.trainer.precision_plugin
        plain = type(precision).clip_grad_by_norm is Precision.clip_grad_by_norm
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and plain:
            scaler = getattr(precision, "scaler", None)
            if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
                # fp16's scaler with a fused optimizer (the CUDA default): Lightning leaves the gradients scaled for
                # the fused step to unscale, and refuses to clip them; unscaled here, the step gets grad_scale None
                # (torch's GradScaler: stage UNSCALED) and clips the true norm, not one ~65,536 times too large.
                scaler.unscale_(optimizer)
            # Lightning's clip_grad_norm_, with the norm the NaN guard already took at this step (one norm a step).
            norm = grad_norm(optimizer, self.trainer.global_step)
            if norm is not None:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
