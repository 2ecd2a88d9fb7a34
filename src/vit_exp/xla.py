"""``hw=tpu``: Lightning's Trainer on torch_xla, with bf16 done the current way and a graph cut per evaluation batch.

``conf/hw/tpu.yaml`` names ``xla_trainer`` as the trainer's ``_target_``; it takes the Trainer's own arguments.

- Strategy: ``auto`` chooses by the device count: Lightning's ``SingleDeviceXLAStrategy`` on one device, on several
  its multiprocess ``XLAStrategy`` as ``ResumableXLAStrategy``, whose train loader keeps its position for a mid-epoch
  resume; ``strategy: xla`` on one device fails in Lightning, and ``vit_exp.checks.check_hardware`` says so first.
- Checkpoints: ``AtomicXLACheckpointIO``, replaced whole or not at all.
- Precision: Lightning's ``XLAPrecision`` makes ``bf16-true`` by setting ``XLA_USE_BF16``, which torch_xla
  deprecates and which turns every float on the device into bf16, metric sums included. ``XLABf16Precision`` keeps
  ``XLAPrecision``'s optimizer step (gradient all-reduce, ``mark_step``) and makes bf16 as Lightning does on other
  devices: the module's weights in bf16 (``bf16-true``, as ``HalfPrecision``) or autocast (``bf16-mixed``, as
  ``MixedPrecision``). Loss and metrics stay float32 (``ViTModule`` casts the logits; Lightning's logged sums are
  at least float32).
- Graph cuts: every step begins a graph of its own (``XLABf16Precision``'s step contexts), and ``XLAGraphCuts``
  (``vit_exp.callbacks.xla``) ends each evaluation batch's on a single device: one compiled graph per kind of step.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.xla import XLACheckpointIO
from lightning.pytorch.plugins.precision import XLAPrecision
from lightning.pytorch.strategies import XLAStrategy
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

    # Every step in a graph of its own: what the hooks left pending since the last step (the metrics' and logged
    # values' resets, a callback's bookkeeping) runs first, as a small graph, so that each training (and evaluation)
    # step traces the same graph whatever ran between them, and compiles once.
    @contextmanager
    def train_step_context(self) -> Generator[None, None, None]:
        from vit_exp.callbacks.xla import sync

        sync()
        with self.forward_context():
            yield

    val_step_context = test_step_context = predict_step_context = train_step_context

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


class AtomicXLACheckpointIO(XLACheckpointIO):
    """Lightning's ``XLACheckpointIO`` (tensors copied to the host, then ``torch.save``) replacing a local checkpoint
    whole or not at all, as ``vit_exp.checkpoints.atomic.AtomicCheckpointIO`` does on other devices: written beside
    the target, fsynced, then renamed over it. Lightning's XLA strategies take no other kind of checkpoint writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        from vit_exp.checkpoints.atomic import replaced_whole

        with replaced_whole(path) as tmp:
            super().save_checkpoint(checkpoint, tmp)


@functools.cache  # one class: isinstance holds across calls
def _mp_device_loader() -> type:
    """``ResumableMpDeviceLoader``, made on first use: torch_xla is imported only on XLA runs."""
    from torch_xla.distributed.parallel_loader import MpDeviceLoader

    class ResumableMpDeviceLoader(MpDeviceLoader):
        """torch_xla's ``MpDeviceLoader`` (batches copied to the device by background threads) with the wrapped
        loader's ``state_dict``, at the batches handed to the training step: the threads read ahead of it, so the
        wrapped loader's own count would skip, on resume, batches that were prefetched and never trained on."""

        def __iter__(self) -> Iterator[Any]:
            self._handed = self._loader.start_position() if hasattr(self._loader, "start_position") else 0
            for batch in super().__iter__():
                self._handed += 1
                yield batch

        def state_dict(self) -> dict[str, Any]:
            if not hasattr(self._loader, "state_dict_at"):
                return {}
            return self._loader.state_dict_at(getattr(self, "_handed", self._loader.start_position()))

        def load_state_dict(self, state: dict[str, Any]) -> None:
            if hasattr(self._loader, "load_state_dict"):
                self._loader.load_state_dict(state)

    return ResumableMpDeviceLoader


class ResumableXLAStrategy(XLAStrategy):
    """Lightning's multiprocess ``XLAStrategy`` whose train loader keeps its position (a ``ResumableLoader`` inside
    a ``ResumableMpDeviceLoader``), so that a run on several XLA devices resumes mid-epoch as on one."""

    def process_dataloader(self, dataloader: object) -> object:
        if isinstance(dataloader, _mp_device_loader()):
            return dataloader
        wrapped = _mp_device_loader()(dataloader, self.root_device)
        wrapped.dataset = dataloader.dataset  # the DataLoader attributes Lightning reads, as XLAStrategy sets them
        wrapped.batch_sampler = getattr(dataloader, "batch_sampler", None)
        return wrapped


def xla_device_count(devices: Any) -> int:
    """How many XLA devices ``trainer.devices`` asks for ("auto": all there are)."""
    from lightning.pytorch.accelerators import XLAAccelerator

    parsed = XLAAccelerator.parse_devices(XLAAccelerator.auto_device_count() if devices in (None, "auto") else devices)
    return len(parsed) if isinstance(parsed, list) else int(parsed)


def xla_trainer(
    precision: str = "bf16-true",
    plugins: Sequence[Any] | None = None,
    callbacks: Sequence[pl.Callback] | None = None,
    **kwargs: Any,
) -> pl.Trainer:
    """A Lightning ``Trainer`` for XLA devices: ``precision`` through ``XLABf16Precision``, checkpoints through
    ``AtomicXLACheckpointIO``, ``XLAGraphCuts`` added to the callbacks; every other argument is the Trainer's.
    ``strategy: auto`` chooses by the device count: Lightning's ``SingleDeviceXLAStrategy`` on one,
    ``ResumableXLAStrategy`` on several."""
    from vit_exp.callbacks.xla import XLAGraphCuts

    plugins = [*(plugins or ()), XLABf16Precision(str(precision)), AtomicXLACheckpointIO()]
    if kwargs.get("strategy", "auto") in (None, "auto") and xla_device_count(kwargs.get("devices", "auto")) > 1:
        kwargs["strategy"] = ResumableXLAStrategy()  # what "auto" picks on several devices, with a resumable loader
    callbacks = [*(callbacks or ()), XLAGraphCuts()]
    return pl.Trainer(plugins=plugins, callbacks=callbacks, **kwargs)
