"""``Preemption``: SIGTERM/SIGUSR1 save ``last.ckpt`` on every rank at the next step boundary, requeue the SLURM
job, and exit with status 0; the requeued job finds the checkpoint with ``resume=auto``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from vit_exp.errors import Preempted

log = logging.getLogger(__name__)


def _requeue_slurm_job() -> None:
    """``scontrol requeue`` this SLURM job (array tasks by their ``JOBID_TASKID``), as Lightning does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, text=True)
    except FileNotFoundError:  # the checkpoint is saved: the job can still be resubmitted by hand
        log.warning("scontrol is not on PATH: SLURM job %s was not requeued; resubmit it with resume=auto", job)
        return
    if result.returncode:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
    else:
        log.info("requeued SLURM job %s", job)


class Preemption(pl.Callback):
    """Save ``last.ckpt`` and exit cleanly when the scheduler signals a preemption or the end of the time limit.

    The signal handler only records the signal. At the next training-step boundary (one process) or the next
    step that is a multiple of ``check_every_n_steps`` (several: the ranks agree by an all-reduce, any rank
    signalled: all stop, so it is not paid every step), every rank takes part in ``trainer.save_checkpoint`` (so
    sharded checkpoints are complete), rank 0 requeues the SLURM job, and the process exits with ``exit_code``.
    With ``resume=auto`` the requeued job continues from that checkpoint in the same run directory. Under
    Lightning's DDP launcher only the main process may receive the signal: the agreement step covers that.

    Args:
        dirpath: Where the checkpoint goes (``callbacks.last_checkpoint.dirpath``).
        filename: Its name without ``.ckpt`` (``callbacks.last_checkpoint.filename``), so ``resume=auto`` finds it.
        signals: Signal names to handle, e.g. ``[SIGTERM, SIGUSR1]`` (SLURM: ``#SBATCH --signal=USR1@120``).
        requeue: ``scontrol requeue`` the job; None: when running under SLURM (``SLURM_JOB_ID`` is set).
        exit_code: Status of the process after the save.
        check_every_n_steps: With several processes, how often the ranks compare notes (an all-reduce, which
            makes the host wait for the device); None: every ``trainer.log_every_n_steps`` steps. Leave enough
            steps' time before the scheduler's kill (SLURM: ``--signal=USR1@120``).
    """

    def __init__(
        self,
        dirpath: str,
        filename: str = "last",
        signals: Sequence[str] = ("SIGTERM", "SIGUSR1"),
        requeue: bool | None = None,
        exit_code: int = 0,
        check_every_n_steps: int | None = None,
    ) -> None:
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"unknown signal names {unknown}; use names such as SIGTERM, SIGUSR1, SIGUSR2")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signals = [getattr(signal, s) for s in signals]
        self.requeue = requeue
        self.exit_code = exit_code
        self.check_every_n_steps = check_every_n_steps
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # nothing else here: the save happens between steps, where the state is whole

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning has installed its handlers (which save in the middle of a step, on one rank only).
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("Preemption: not in the main thread, so no signal handlers; preemption will not be saved")
            return
        self.received = None
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1:
            every = self.check_every_n_steps or max(1, trainer.log_every_n_steps)
            if trainer.global_step % every:  # global_step: the same on every rank
                return
            if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
                return
        elif self.received is None:  # one process: a Python flag, nothing asked of the device
            return
        name = signal.Signals(self.received).name if self.received else "a signal to another rank"
        trainer.save_checkpoint(self.path)
        flush = getattr(trainer.strategy.checkpoint_io, "flush", None)  # a writer in the background: wait for it
        if flush is not None:
            flush()
        requeue = self.requeue if self.requeue is not None else "SLURM_JOB_ID" in os.environ
        if requeue and trainer.is_global_zero:
            _requeue_slurm_job()
        rank_zero_info(f"preempted by {name} at step {trainer.global_step}: saved {self.path}; exiting")
        self._restore_handlers()
        raise Preempted(self.exit_code)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
