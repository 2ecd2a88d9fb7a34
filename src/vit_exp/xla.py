"""``hw=tpu``: Lightning's Trainer on torch_xla, with bf16 done the current way and a graph cut per evaluation batch.

``conf/hw/tpu.yaml`` names ``xla_trainer`` as the trainer's ``_target_``; it takes the Trainer's own arguments.

- Strategy: ``auto`` lets Lightning choose by the device count (``SingleDeviceXLAStrategy`` on one device, the
  multiprocess ``XLAStrategy`` on several); ``strategy: xla`` on one device fails in Lightning, and
  ``vit_exp.checks.check_hardware`` says so first.
- Precision: Lightning's ``XLAPrecision`` makes ``bf16-true`` by setting ``XLA_USE_BF16``, which torch_xla
  deprecates and which turns every float on the device into bf16, metric sums included. ``XLABf16Precision`` keeps
  ``XLAPrecision``'s optimizer step (gradient all-reduce, ``mark_step``) and makes bf16 as Lightning does on other
  devices: the module's weights in bf16 (``bf16-true``, as ``HalfPrecision``) or autocast (``bf16-mixed``, as
  ``MixedPrecision``). Loss and metrics stay float32 (``ViTModule`` casts the logits; Lightning's logged sums are
  at least float32).
- ``XLAGraphCuts`` (``vit_exp.callbacks.xla``): one graph per evaluation batch on a single device.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import XLAPrecision
from torch import nn

PRECISIONS = ("bf16-true", "bf16-mixed", "32-true")  # what hw=tpu takes as trainer.precision


class XLABf16Precision(XLAPrecision):
    """``XLAPrecision`` without ``XLA_USE_BF16``: bf16 weights (``bf16-true``) or bf16 autocast (``bf16-mixed``).

    Args:
        precision: ``bf16-true``, ``bf16-mixed`` or ``32-true``.
    """

    def __init__(self, precision: str = "bf16-true") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)} on XLA")
        super().__init__("32-true")  # the optimizer step; "32-true" leaves the environment alone
        self.precision = precision  # type: ignore[assignment]
        self._desired_dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=torch.bfloat16) if self.precision == "bf16-true" else module

    def convert_input(self, data: Any) -> Any:
        """Float tensors of a batch to bf16 under ``bf16-true`` (integer images and labels stay as they are)."""
        if self.precision != "bf16-true":
            return data
        if isinstance(data, torch.Tensor):
            return data.to(torch.bfloat16) if data.is_floating_point() else data
        if isinstance(data, (list, tuple)):
            return type(data)(self.convert_input(d) for d in data)
        if isinstance(data, dict):
            return {k: self.convert_input(v) for k, v in data.items()}
        return data

    def tensor_init_context(self) -> AbstractContextManager:
        return _default_dtype(torch.bfloat16) if self.precision == "bf16-true" else nullcontext()

    def module_init_context(self) -> AbstractContextManager:
        return self.tensor_init_context()

    @contextmanager
    def forward_context(self) -> Generator[None, None, None]:
        if self.precision == "bf16-mixed":
            with torch.autocast("xla", dtype=torch.bfloat16):
                yield
        else:
            with self.tensor_init_context():
                yield


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def xla_trainer(
    precision: str = "bf16-true",
    plugins: Sequence[Any] | None = None,
    callbacks: Sequence[pl.Callback] | None = None,
    **kwargs: Any,
) -> pl.Trainer:
    """A Lightning ``Trainer`` for XLA devices: ``precision`` through ``XLABf16Precision``, ``XLAGraphCuts`` added
    to the callbacks; every other argument is the Trainer's (``strategy: auto`` chooses by the device count)."""
    from vit_exp.callbacks.xla import XLAGraphCuts

    plugins = [*(plugins or ()), XLABf16Precision(str(precision))]
    callbacks = [*(callbacks or ()), XLAGraphCuts()]
    return pl.Trainer(plugins=plugins, callbacks=callbacks, **kwargs)
