"""``XLAGraphCuts``: one XLA graph per evaluation batch; ``XLAMetricsLog``: torch_xla's counters per training step."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def sync() -> None:
    import torch_xla

    torch_xla.sync()  # xm.mark_step in torch_xla < 2.6: run the pending graph, start a new one


class XLAGraphCuts(pl.Callback):
    """Cut the lazy graph after every validation, test and predict batch.

    On one device Lightning moves batches itself and marks a step only after an optimizer step, so an evaluation
    epoch would trace into a single graph, unrolled over all its batches (one compile per epoch length, memory
    growing with it). Cut after each batch, every batch of one shape runs the same compiled graph. Several devices
    already cut there (their loaders are torch_xla's ``MpDeviceLoader``); a second cut with nothing pending costs
    nothing. ``vit_exp.xla.xla_trainer`` adds it to every XLA run.
    """

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        sync()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        sync()

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        sync()


COUNTERS = ("CompileTime", "ExecuteTime", "TransferFromDeviceTime")  # torch_xla metrics: (number of samples)
OPS = ("xla::_local_scalar_dense",)  # aten ops that read a device value on the host (.item(), bool(t))


def xla_counts() -> dict[str, int]:
    """torch_xla's counts so far in this process: compilations, executions, device-to-host transfers, ``.item()``."""
    import torch_xla.debug.metrics as met

    counts = {name: (met.metric_data(name) or (0,))[0] for name in COUNTERS}
    counts.update({name: met.counter_value(name) or 0 for name in OPS})
    return counts


class XLAMetricsLog(pl.Callback):
    """Append torch_xla's counts (``xla_counts``) at every training step to a JSON-lines file, for finding what
    recompiles or reads the device (the tests of ``tests/xla`` read it): ``CompileTime`` flat across a step's optimizer
    step means that the step reused its graph; ``TransferFromDeviceTime`` moves only at the steps that log. Off by
    default, e.g.
    ``+callbacks.xla_metrics._target_=vit_exp.callbacks.xla.XLAMetricsLog +callbacks.xla_metrics.path=xla.jsonl``.

    Args:
        path: The file; two lines per training step: ``{"step": global_step, "stage": "step", "s": seconds,
            <counter>: count, ...}`` before its optimizer step (the step traced, its graph not yet compiled nor run)
            and ``"stage": "train"`` when the next one starts (``global_step`` counts the step by then); one at the
            end of each validation and of the test (``stage`` "val", "test"); ``s``: wall time since this callback
            was made (the step time, once the steps run at their pace).
        counters: False: the clock alone, without torch_xla (the same records of a run on another device).
    """

    def __init__(self, path: str, counters: bool = True) -> None:
        self.path = Path(path)
        self.counters = counters
        self._start = time.perf_counter()

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        if trainer.is_global_zero:
            line = {"step": trainer.global_step, "stage": stage, "s": round(time.perf_counter() - self._start, 4)}
            with self.path.open("a") as f:
                f.write(json.dumps({**line, **(xla_counts() if self.counters else {})}) + "\n")

    # A training step's counts are read when the next one starts (or the validation after it), not in
    # on_train_batch_end: Lightning writes the logs after the batch-end hooks, and those reads belong to the step.
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._write(trainer, "train")

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._write(trainer, "step")  # traced, not yet run: the step's own graph compiles after this, at its cut

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":  # not the validation of eval.py or a sanity check outside fit
            self._write(trainer, "train")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test")
