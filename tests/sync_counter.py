"""Count host reads (a value the host waits on the device for) per training step, with a ``TorchDispatchMode``.

A host read stalls a GPU's queue and cuts an XLA graph. On a CPU run no tensor lives elsewhere, so the copies
to the host cannot be seen; what can be seen on any device are the ops that hand a tensor's *value* to Python
(``.item()``, ``bool(t)``, ``torch.equal``) or whose output size depends on values (``nonzero``, ``unique``):
on a GPU each waits for the queue. Copies from a non-CPU tensor to the CPU are counted too (GPU, XLA), and so are
tensors made from Python data (``lift_fresh``), which a GPU gets by a copy that waits for its queue; the loader's
own (``pil_to_tensor``, collation) are made in its worker processes, where this mode does not look.

    with HostReads() as reads:
        run.train(tiny_cfg("+callbacks.step_reads._target_=tests.sync_counter.StepMarker", ...))
    reads.by_step  # {global step: [op names]}; reads.logging_steps: the steps where Lightning logged

The ``StepMarker`` callback tells the active ``HostReads`` which training step the ops belong to: from the start
of a batch to the start of the next one (so Lightning's own per-batch work after ``on_train_batch_end``, the
progress bar and the loggers, is counted in its step), and nothing outside the training batches.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose result the host must wait for: a tensor's value as a Python number or bool, or an output whose size
# depends on the values.
VALUE_READS = {
    aten._local_scalar_dense.default,  # .item(), bool(t), int(t), float(t)
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.unique_dim.default,
}
COPIES = {aten._to_copy.default, aten.copy_.default}
# A tensor made from Python data (``torch.tensor``, ``torch.as_tensor`` of a list): for a GPU it is made on the host
# and copied from pageable memory, a copy that waits for the device's queue (``cudaMemcpy``), so it is a sync too.
HOST_MADE = {aten.lift_fresh.default}


def _device_to_host(func: Any, args: tuple, kwargs: dict) -> bool:
    """A copy from a tensor on another device to the CPU."""
    if func is aten._to_copy.default:
        src, device = args[0], kwargs.get("device")
        return src.device.type != "cpu" and device is not None and torch.device(device).type == "cpu"
    dst, src = args[0], args[1]
    return isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst.device.type == "cpu"


class HostReads(TorchDispatchMode):
    """Records every host read while active, keyed by the training step that ``StepMarker`` says is running
    (None: outside the training batches)."""

    active: ClassVar[HostReads | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.step: int | None = None
        self.by_step: dict[int | None, list[str]] = defaultdict(list)
        self.logging_steps: set[int] = set()
        self.steps: set[int] = set()  # every training step seen
        self.optimizers: list[torch.optim.Optimizer] = []  # the run's, from StepMarker

    def _host_side(self, tensor: torch.Tensor) -> bool:
        """A step counter that a non-fused optimizer keeps on the CPU beside weights on any device (torch's design,
        so that reading it never waits for a device): on a GPU, reading it is no device read."""
        return any(
            state.get("step") is tensor
            for optimizer in self.optimizers
            if not getattr(optimizer, "_step_supports_amp_scaling", False)
            for state in optimizer.state.values()
        )

    def __enter__(self) -> HostReads:
        HostReads.active = self
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        HostReads.active = None
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and self._host_side(args[0]):
            return func(*args, **kwargs)
        if func in VALUE_READS or func in HOST_MADE or (func in COPIES and _device_to_host(func, args, kwargs)):
            self.by_step[self.step].append(str(func.overloadpacket.__name__))
        return func(*args, **kwargs)

    def outside_logging_steps(self) -> dict[int, list[str]]:
        """The reads in training steps where Lightning did not log."""
        return {
            s: ops for s, ops in self.by_step.items() if s is not None and ops and s not in self.logging_steps
        }


class StepMarker(pl.Callback):
    """Tells the active ``HostReads`` which training step runs (put it first among the callbacks' hooks: its
    ``on_train_batch_start`` is the boundary), and which steps are logging steps."""

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        trainer.callbacks.remove(self)  # first: the other callbacks' on_train_batch_start belongs to the new step
        trainer.callbacks.insert(0, self)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        reads = HostReads.active
        if reads is not None:
            reads.step = trainer.global_step
            reads.steps.add(trainer.global_step)
            reads.optimizers = trainer.optimizers
            if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # Lightning's rule (one optimizer)
                reads.logging_steps.add(trainer.global_step)

    def _outside(self, *_: Any) -> None:
        if HostReads.active is not None:
            HostReads.active.step = None

    on_train_epoch_end = _outside
    on_validation_start = _outside
