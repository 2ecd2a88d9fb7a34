"""``EMA``: an exponential moving average of the weights (timm's ``--model-ema``), on Lightning's ``WeightAveraging``.

Lightning's callback does the bookkeeping, and we keep it: the averaged copy (``torch.optim.swa_utils.AveragedModel``
of the whole LightningModule), validation on the average (so ``val/top1``, and with it the best checkpoint, are the
EMA's), the average written as the checkpoint's ``state_dict`` with the trained weights beside it in
``current_model_state`` (eval.py and predict.py read the EMA unless ``use_ema=false``), both restored on resume,
and the average copied into the model when training ends (the test and ``results.json`` are the EMA's).

What ours replaces, and why:

- The update. ``EMAWeightAveraging`` has one fixed decay, and ``AveragedModel.update_parameters`` reads its
  counter on the host twice a step (a GPU stall, an XLA graph break) and averages tensor by tensor. Ours has
  timm's warm-up (``ModelEmaV3``: the first update copies the weights; the n-th decays by
  ``min(decay, 1 - (1 + (n - 1) / warmup_gamma) ** -warmup_power)``), computed from the Trainer's step count (a
  host integer), in one fused lerp (``get_ema_multi_avg_fn``) per step.
- Setup. Lightning's calls ``configure_model`` a second time (ours compiles) and warns about sharding; FSDP and
  model parallelism are refused here: the average would be an unsharded copy paired with sharded parameters.
- The validation swap. The trained weights wait in a copy while the model holds the average, so that an average
  kept in float32 beside a ``bf16-true`` model is not rounded through the model's dtype at every validation.
- A test after fit on the same Trainer (``run.train``): Lightning's ``on_load_checkpoint`` would put the trained
  weights back over the EMA that ``state_dict`` holds; outside fit it does nothing here.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vit_exp.compat import WeightAveragingState
from vit_exp.errors import ConfigError


def ema_callback(decay: float | None = None, **kwargs: Any) -> EMA | None:
    """The ``callbacks.ema`` node of ``conf/callbacks/default.yaml``: an ``EMA``, or None (no EMA) when ``decay``
    is null, as it is by default (``callbacks.ema.decay=0.9998`` turns it on)."""
    return None if decay is None else EMA(decay=decay, **kwargs)


class EMA(WeightAveragingState, WeightAveraging):
    """Keep an exponential moving average of the weights, validate and checkpoint it (see the module's docstring).

    Args:
        decay: The decay once warmed up (0.9998: timm's ``--model-ema-decay`` default; DeiT uses 0.99996).
        warmup: Warm the decay up from 0 (timm ``ModelEmaV3``'s ``use_warmup``); False: ``decay`` from the
            second update on, which short runs average towards their first weights.
        warmup_gamma: Steps are counted in units of ``warmup_gamma`` in the warm-up.
        warmup_power: 3/4 reaches 0.999 after 10k steps, 2/3 after 31.6k (timm's notes, after @crowsonkb).
        device: Where the average lives; None: with the model (``"cpu"`` saves accelerator memory).
    """

    def __init__(
        self,
        decay: float = 0.9998,
        warmup: bool = True,
        warmup_gamma: float = 1.0,
        warmup_power: float = 0.75,
        device: str | None = None,
    ) -> None:
        super().__init__(device=device, use_buffers=True)
        self.device = torch.device(device) if device else None
        self.decay, self.warmup, self.warmup_gamma, self.warmup_power = decay, warmup, warmup_gamma, warmup_power
        self._trained: list[torch.Tensor] | None = None  # the trained weights while validation holds the average

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (1 for the first): timm's ``get_decay(step)``."""
        n = step - 1
        if n <= 0:
            return 0.0  # the first update copies the weights
        if not self.warmup:
            return self.decay
        return min(1 - (1 + n / self.warmup_gamma) ** -self.warmup_power, self.decay)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
            raise ConfigError(
                f"callbacks.ema cannot average a sharded model ({type(trainer.strategy).__name__}): Lightning's "
                "WeightAveraging keeps a whole, unsharded copy; use hw=ddp or hw=gpu, or callbacks.ema.decay=null"
            )
        # pl_module.device is already the training device (Lightning sets it before setup)
        self.average = AveragedModel(pl_module, device=self.device or pl_module.device, use_buffers=True)

    def _pairs(self, pl_module: pl.LightningModule) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the average's tensors, the model's), in the order ``WeightAveraging`` pairs them: parameters, buffers."""
        assert self.average is not None
        average = [*self.average.module.parameters(), *self.average.module.buffers()]
        return average, [*pl_module.parameters(), *pl_module.buffers()]

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step <= self.latest_update_step:  # no optimizer step in this batch (gradient accumulation)
            return
        average, current = self._pairs(pl_module)
        floats = [(a, c.detach().to(a.device, a.dtype)) for a, c in zip(average, current) if a.is_floating_point()]
        if floats:
            ema, new = map(list, zip(*floats))
            get_ema_multi_avg_fn(self.decay_at(step))(ema, new, None)
        for a, c in zip(average, current):
            if not a.is_floating_point():  # counters (BatchNorm's num_batches_tracked): the model's own
                a.copy_(c)
        self.average.n_averaged += 1  # on the device: no host read
        self.latest_update_step = step

    @torch.no_grad()
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is None or self._trained is not None:
            return
        average, current = self._pairs(pl_module)
        self._trained = [c.detach().clone() for c in current]
        for a, c in zip(average, current):
            c.copy_(a)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trained is None:
            return
        for trained, c in zip(self._trained, self._pairs(pl_module)[1]):
            c.copy_(trained)
        self._trained = None

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # test/validate/predict evaluate the average ``state_dict`` holds
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
