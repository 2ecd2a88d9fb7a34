"""``Throughput``: training images per second (``results.json``'s ``images_per_s``), and where the time between
steps goes once the run is warm: the steady rate, the host's share of it spent waiting for the next batch, and on a
GPU the share of the device's time outside the training steps."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import lightning.pytorch as pl
import torch


class Throughput(pl.Callback):
    """Training images per second over the whole fit, loading included, validation excluded; and the same after
    the first ``warmup_steps`` batches of the fit, with the share of that time spent between steps.

    Over the whole fit the first steps count, and with ``compile=true`` the first one compiles the training graph
    (tens of seconds for a B/16), so ``images_per_s`` of a short run mostly measures the compiler. The steady
    figures leave the first ``warmup_steps`` batches out, and every interval across a validation or an epoch's
    start (checkpoints, the loader's restart). Each batch after the first of such a run covers the time from the
    previous batch's end to its own end; within it, the time until its ``on_train_batch_start`` is spent getting
    it: the next batch from the loader, its copy to the device, ``on_after_batch_transfer`` (normalising,
    decoding with ``data.decode=device``).

    - ``input_wait_share``: that time's share as the host sees it. The step itself is not waited for (it reads
      nothing back outside logging steps), so with a GPU ahead of the host it is an upper bound of the time the
      GPU waited for data: the host may wait while the GPU still works through queued steps.
    - ``device_gap_share`` (CUDA): the same split on the device's clock, from CUDA events recorded on the stream at
      each batch's start and end and read once they have passed (``Event.query``: never a wait): the GPU's time
      between one step's last kernel and the next one's first, idle or copying and decoding the batch.

    The counts are per process times the world size, i.e. the global rate under DDP.

    Args:
        warmup_steps: Training batches at the start of the fit left out of the steady figures (of a fit of fewer
            than four times as many steps, its first quarter).
    """

    def __init__(self, warmup_steps: int = 10) -> None:
        self.warmup_steps = warmup_steps
        self.images = 0
        self.seconds = 0.0
        self._since: float | None = None
        self._batches = 0  # training batches of this fit so far
        self._warmup = warmup_steps  # this fit's
        self.steady = _Split()  # on the host's clock
        self.device = _Split()  # on the device's clock (CUDA)
        self._start: float | None = None  # this batch's on_train_batch_start (host), None: not a steady batch
        self._cuda = False
        self._events: deque[tuple[Any, Any]] = deque()  # (start, end) CUDA events not read yet; (None, None): a cut
        self._start_event: Any = None
        self._origin: Any = None  # the first event: times are read as milliseconds since it

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds else None

    @property
    def images_per_s_steady(self) -> float | None:
        return self.steady.rate()

    @property
    def input_wait_share(self) -> float | None:
        return self.steady.share()

    @property
    def device_gap_share(self) -> float | None:
        self._read_events(wait=True)
        return self.device.share()

    def _restart(self, *_: Any) -> None:
        self._since = time.perf_counter()
        self.steady.cut()  # an interval across a validation or an epoch boundary is no step's
        if self._cuda:
            self._events.append((None, None))

    on_train_epoch_start = _restart
    on_validation_end = _restart  # a validation in the middle of an epoch does not count as training

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batches = 0
        total = trainer.estimated_stepping_batches  # inf: a stream without max_steps
        self._warmup = min(self.warmup_steps, int(total) // 4) if math.isfinite(total) else self.warmup_steps
        self._cuda = pl_module.device.type == "cuda"

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter() if self._batches >= self._warmup else None
        if self._start is not None and self._cuda:
            self._start_event = torch.cuda.Event(enable_timing=True)
            self._start_event.record()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        images = len(batch[0]) * trainer.world_size
        if self._since is not None:
            self.seconds += now - self._since
            self.images += images
        self._since = now
        self._batches += 1
        if self._start is None:
            return
        self.steady.add(self._start, now, images)
        if self._start_event is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start_event, end))
            self._start_event = None
            self._read_events(wait=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read_events(wait=True)  # the fit is over: its last events may be waited for

    def _read_events(self, wait: bool) -> None:
        """Move the events that the device has passed (all of them with ``wait``) into ``self.device``."""
        while self._events:
            start, end = self._events[0]
            if start is None:
                self.device.cut()
            else:
                if wait:
                    end.synchronize()
                elif not end.query():
                    return
                if self._origin is None:
                    self._origin = start
                self.device.add(self._origin.elapsed_time(start) / 1e3, self._origin.elapsed_time(end) / 1e3, 0)
            self._events.popleft()


class _Split:
    """Runs of consecutive batches, each as (start, end) times: a batch after a run's first covers the time from the
    previous batch's end to its own, of which the time until its start was spent between steps."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0  # previous end -> end, summed
        self.between = 0.0  # previous end -> start, summed
        self._end: float | None = None

    def add(self, start: float, end: float, images: int) -> None:
        if self._end is not None:
            self.seconds += end - self._end
            self.between += max(start - self._end, 0.0)
            self.images += images
        self._end = end

    def cut(self) -> None:
        self._end = None

    def rate(self) -> float | None:
        return self.images / self.seconds if self.seconds else None

    def share(self) -> float | None:
        return self.between / self.seconds if self.seconds else None
