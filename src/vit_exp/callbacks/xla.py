"""``XLAGraphCuts``: one XLA graph per evaluation batch; ``XLAMetricsLog``: torch_xla's counters per training step."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


def _sync() -> None:
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
        _sync()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        _sync()

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        _sync()


COUNTERS = ("CompileTime", "ExecuteTime", "TransferFromDeviceTime")  # torch_xla metrics: (number of samples)
OPS = ("xla::_local_scalar_dense",)  # aten ops that read a device value on the host (.item(), bool(t))


def xla_counts() -> dict[str, int]:
    """torch_xla's counts so far in this process: compilations, executions, device-to-host transfers, ``.item()``."""
    import torch_xla.debug.metrics as met

    counts = {name: (met.metric_data(name) or (0,))[0] for name in COUNTERS}
    counts.update({name: met.counter_value(name) or 0 for name in OPS})
    return counts


class XLAMetricsLog(pl.Callback):
    """Append torch_xla's counts (``xla_counts``) after every training step (read as the next one begins) to a
    JSON-lines file: a flat ``CompileTime`` after the first steps means no recompilation; ``TransferFromDeviceTime``
    moves only at the steps that log. For finding what recompiles or syncs (the tests of ``tests/xla`` read it); off by default, e.g.
    ``+callbacks.xla_metrics._target_=vit_exp.callbacks.xla.XLAMetricsLog +callbacks.xla_metrics.path=xla.jsonl``.

    Args:
        path: The file; a line per step: ``{"step": global_step, "stage": "train", "s": seconds, <counter>: count,
            ...}``, and one at the end of each validation and of the test (``stage`` "val", "test"); ``s``: wall time
            since this callback was made (the step time, once the steps run at their pace).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._start = time.perf_counter()

    def _write(self, trainer: pl.Trainer, stage: str) -> None:
        if trainer.is_global_zero:
            line = {"step": trainer.global_step, "stage": stage, "s": round(time.perf_counter() - self._start, 4)}
            with self.path.open("a") as f:
                f.write(json.dumps({**line, **xla_counts()}) + "\n")

    # A training step's counts are read when the next one starts (or the validation after it), not in
    # on_train_batch_end: Lightning writes the logs after the batch-end hooks, and those reads belong to the step.
    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._write(trainer, "train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":  # not the validation of eval.py or a sanity check outside fit
            self._write(trainer, "train")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, "test")
