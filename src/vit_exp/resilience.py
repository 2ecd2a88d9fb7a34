"""Runs that survive what clusters do to them: preemption, crashes, half-written files and diverging losses.

- ``resume=auto`` (``resume_path``): continue from the run directory's ``checkpoints/last.ckpt`` if there is one.
- ``AtomicCheckpointIO``: a checkpoint is replaced whole or not at all (temporary file, then ``os.replace``).
- ``AtomicFSDPStrategy``: the same for FSDP's sharded checkpoints, which are directories (written beside the
  old one, then swapped in by renames; ``resume=auto`` finishes a swap that a crash cut short).
- ``Preemption``: SIGTERM/SIGUSR1 save ``last.ckpt`` on every rank at the next step boundary, requeue the
  SLURM job, and exit with status 0; the requeued job finds the checkpoint with ``resume=auto``.
- ``NonFiniteLossGuard``: a NaN/Inf loss stops the run before the update (or skips the step).
- ``ResumableSampler`` / ``ResumableLoader`` / ``SeededSamples`` / ``ExactResume``: the train order is a
  function of (seed, epoch), each sample's augmentation a function of (seed, epoch, its place in the epoch),
  the position within the epoch and the random generators are part of the checkpoint, so a run killed
  mid-epoch and resumed ends bit for bit where an uninterrupted one does, whatever the number of loader
  workers (Lightning saves loaders that have ``state_dict``/``load_state_dict``). Streamed sources (``IterableDataset``: shards, HF streaming) restart
  their epoch's stream on resume instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vit_exp.errors import NonFiniteLossError, Preempted

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

RESUME_MODES = (None, "auto")


# ---------------------------------------------------------------------------------------------------------------------
# resume=auto


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` should start from: ``ckpt_path``, or with ``resume=auto`` the run's last one.

    ``resume=auto`` looks in the run directory itself (``paths.output_dir``), at the file the
    ``callbacks.last_checkpoint`` callback writes (``checkpoints/last.ckpt``): give the run a fixed directory
    (``hydra.run.dir=outputs/my_run``, or a SLURM job id) and the same command continues it after a crash or a
    requeue, and starts it when there is nothing to continue. A sharded save that died between its two renames
    left the previous checkpoint at ``.last.ckpt.old``: it is put back first (``recover_interrupted_swap``).

    Raises:
        ConfigError: an unknown ``resume`` value, both ``resume=auto`` and ``ckpt_path``, or ``resume=auto``
            without a last-checkpoint callback.
    """
    from vit_exp.errors import ConfigError

    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume not in RESUME_MODES:
        raise ConfigError(
            f"resume={resume} is not a mode; use resume=auto (continue this run directory's last checkpoint) "
            f"or ckpt_path=PATH (start from a given checkpoint)"
        )
    if resume is None:
        return ckpt_path
    if ckpt_path:
        raise ConfigError(f"resume=auto and ckpt_path={ckpt_path} both choose a checkpoint; give one of them")
    last = (cfg.get("callbacks") or {}).get("last_checkpoint")
    if not last:
        raise ConfigError(
            "resume=auto continues from callbacks.last_checkpoint, which this config has none of; use callbacks=default"
        )
    path = Path(last.dirpath) / f"{last.filename}.ckpt"  # a file, or a directory for FSDP's sharded checkpoints
    recover_interrupted_swap(path)
    if path.exists():
        log.info("resume=auto: continuing from %s", path)
        return str(path)
    log.info("resume=auto: no %s yet, starting from scratch", path)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Atomic checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, then ``os.replace`` over it.

    A crash, a full disk or a SIGKILL during the save leaves the previous checkpoint as it was (Lightning's own
    writer buffers the whole checkpoint in memory and, for local files, moves it from the system temp directory,
    which is a copy, not an atomic rename, when that is another file system). Remote paths (``s3://``) go
    through Lightning's writer unchanged.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same directory: os.replace is a rename
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def swap_names(path: Path) -> tuple[Path, Path]:
    """(``.NAME.partial``, ``.NAME.old``) beside checkpoint ``path``: where a sharded save writes, and where the
    checkpoint it replaces waits while the new one is renamed into place. Hidden, and not ending in ``.ckpt``."""
    return path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")


def recover_interrupted_swap(path: Path) -> bool:
    """Put the previous checkpoint back at ``path`` when a save died between its two renames (only
    ``.NAME.old`` is there); True if it did.

    Safe when every rank of a job calls it at once: one rename wins, the others find ``path`` in place.
    """
    old = swap_names(path)[1]
    if path.exists() or not old.exists():
        return False
    try:
        old.rename(path)
    except FileNotFoundError:  # another rank of this job put it back first
        return False
    log.warning("%s was missing: a save stopped between its two renames; put back the previous one from %s", path, old)
    return True


def _remove(path: Path) -> None:
    """Delete a checkpoint file or directory if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class AtomicFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` whose sharded checkpoints are replaced whole or not at all.

    A sharded checkpoint is a directory (one ``__R_0.distcp`` file per rank, torch.distributed.checkpoint's
    ``.metadata`` and Lightning's ``meta.pt``), which Lightning writes in place: a crash during a save would
    leave old and new shards mixed and no usable checkpoint. Here every rank writes into ``.NAME.partial``
    beside it, and once all are done rank 0 swaps it in: ``NAME`` -> ``.NAME.old``, ``.NAME.partial`` ->
    ``NAME``, then deletes ``.NAME.old``. A crash leaves the previous checkpoint whole at ``NAME``, or, between
    the two renames, at ``.NAME.old``, from where ``resume=auto`` (``resume_path``) puts it back. Full state
    dicts (``state_dict_type="full"``, one file) go through the checkpoint_io plugin, atomic already.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        if self._state_dict_type != "sharded" or storage_options is not None:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))  # rank 0's name, so that all ranks write into one directory
        partial, old = swap_names(path)
        if self.is_global_zero:
            _remove(partial)  # what a save that crashed left behind
        self.barrier("AtomicFSDPStrategy.save_checkpoint:clean")  # no rank writes before it is gone
        super().save_checkpoint(checkpoint, partial)
        if self.is_global_zero:
            # DCP's save returns after every rank's shards and the index are written (and fsynced); meta.pt, which
            # rank 0 wrote last, is the one file left to flush before the rename makes the checkpoint current.
            with open(partial / _METADATA_FILENAME, "rb") as f:
                os.fsync(f.fileno())
            if path.exists():
                _remove(old)  # a swap that died after its second rename left it; path is whole
                path.rename(old)
            partial.rename(path)
            _remove(old)
        self.barrier("AtomicFSDPStrategy.save_checkpoint:swapped")  # no rank reads path before it is swapped in

    def remove_checkpoint(self, filepath: _PATH) -> None:
        super().remove_checkpoint(filepath)  # rank 0, through the checkpoint_io plugin: a file or a directory
        if self.is_global_zero and "://" not in str(filepath):
            for leftover in swap_names(Path(filepath)):
                _remove(leftover)


# ---------------------------------------------------------------------------------------------------------------------
# Preemption


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

    The signal handler only records the signal. At the next training-step boundary the ranks agree (any rank
    signalled: all stop), every rank takes part in ``trainer.save_checkpoint`` (so sharded checkpoints are
    complete), rank 0 requeues the SLURM job, and the process exits with ``exit_code``. With ``resume=auto`` the
    requeued job continues from that checkpoint in the same run directory. Under Lightning's DDP launcher only
    the main process may receive the signal: the agreement step covers that.

    Args:
        dirpath: Where the checkpoint goes (``callbacks.last_checkpoint.dirpath``).
        filename: Its name without ``.ckpt`` (``callbacks.last_checkpoint.filename``), so ``resume=auto`` finds it.
        signals: Signal names to handle, e.g. ``[SIGTERM, SIGUSR1]`` (SLURM: ``#SBATCH --signal=USR1@120``).
        requeue: ``scontrol requeue`` the job; None: when running under SLURM (``SLURM_JOB_ID`` is set).
        exit_code: Status of the process after the save.
    """

    def __init__(
        self,
        dirpath: str,
        filename: str = "last",
        signals: Sequence[str] = ("SIGTERM", "SIGUSR1"),
        requeue: bool | None = None,
        exit_code: int = 0,
    ) -> None:
        unknown = [s for s in signals if not hasattr(signal, s)]
        if unknown:
            raise ValueError(f"unknown signal names {unknown}; use names such as SIGTERM, SIGUSR1, SIGUSR2")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signals = [getattr(signal, s) for s in signals]
        self.requeue = requeue
        self.exit_code = exit_code
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
        if not _due(trainer):
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        name = signal.Signals(self.received).name if self.received else "a signal to another rank"
        trainer.save_checkpoint(self.path)
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


def _due(trainer: pl.Trainer) -> bool:
    """Whether a per-step check that syncs with the host runs at this step: every step, but on XLA (TPU), where
    a host sync inside the step breaks the lazy graph, only at the steps where Lightning logs (and syncs) anyway."""
    from lightning.pytorch.accelerators import XLAAccelerator

    if not isinstance(trainer.accelerator, XLAAccelerator):
        return True
    return trainer.global_step % max(1, trainer.log_every_n_steps) == 0


# ---------------------------------------------------------------------------------------------------------------------
# NaN / Inf loss


class NonFiniteLossGuard(pl.Callback):
    """Stop the run, or skip the update, when the loss or the gradients are NaN or infinite.

    Checked after backward and before the optimizer step, so the weights never take a non-finite update and the
    checkpoints already written keep the last good state. Ranks agree on the decision (sharded gradients differ
    per rank). With fp16 and its gradient scaler, whose business non-finite gradients are (it skips those steps
    itself), only the loss is checked.

    Args:
        action: "stop": raise ``NonFiniteLossError``; "skip": drop this step's gradients and go on.
        max_consecutive_skips: With "skip", stop after this many non-finite steps in a row (the run has diverged).
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0  # steps skipped in this process, in total
        self._in_a_row = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not _due(trainer) or self._loss is None:
            return
        finite = torch.isfinite(self._loss)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            norms = torch._foreach_norm(grads)  # one fused kernel; a NaN or Inf anywhere makes its norm non-finite
            finite = finite & torch.isfinite(torch.stack([n.to(finite.device) for n in norms]).sum())
        if not trainer.strategy.reduce_boolean_decision(not bool(finite), all=False):
            self._in_a_row = 0
            return
        where = (
            f"the training loss is {self._loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch})"
        )
        if self.action == "skip" and self._in_a_row < self.max_consecutive_skips:
            optimizer.zero_grad(set_to_none=True)  # no gradients: the optimizer leaves weights and moments alone
            self.skipped += 1
            self._in_a_row += 1
            rank_zero_warn(f"{where} (or a gradient is not finite): skipped this update ({self.skipped} so far)")
            return
        kept = [c.last_model_path or c.best_model_path for c in trainer.checkpoint_callbacks]
        kept_text = ", ".join(p for p in kept if p) or "no checkpoint yet"
        reason = f"{self.max_consecutive_skips} updates in a row were skipped; " if self.action == "skip" else ""
        raise NonFiniteLossError(
            f"{where} (or a gradient is not finite); {reason}the run stops before this update, and the last good "
            f"state is in: {kept_text}. Lower optim.lr, lengthen sched.warmup_steps, check the data, or set "
            "callbacks.nan_guard.action=skip to skip such steps"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Exact resume


class ExactResume(pl.Callback):
    """What Lightning leaves out of a resume, so that a resumed run continues exactly as if never stopped.

    1. The random generators (torch, numpy, python, CUDA): saved in checkpoints and restored, for dropout,
       drop-path and random augmentation.
    2. The train loader's position: Lightning hands a stateful loader its saved state only when it loads the
       train data after restoring the loop state; ``configure_optimizers`` asking for
       ``trainer.estimated_stepping_batches`` (the schedule's length) loads the data before that, and the
       saved position would be dropped. It is handed over here, before the first batch is drawn.
    """

    KEY = "rng_states"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = _collect_rng_states()
        # numpy's state as a tensor and plain values: the checkpoint still loads with weights_only=True
        name, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
        checkpoint[self.KEY] = states

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self.KEY in checkpoint:
            states = dict(checkpoint[self.KEY])
            name, keys, pos, has_gauss, cached = states["numpy"]
            states["numpy"] = (name, keys.numpy().astype("uint32"), pos, has_gauss, cached)
            _set_rng_states(states)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if getattr(fit_loop, "_combined_loader_states_to_load", None):  # not yet handed over (see above)
            fit_loop._load_combined_loader_states()


# ---------------------------------------------------------------------------------------------------------------------
# Resumable data order


class ResumableSampler(DistributedSampler):
    """Shuffled indices that depend only on (seed, epoch), each process taking every world-size'th one, and
    which can start part-way through an epoch (``resume``).

    A ``DistributedSampler``, so Lightning uses it as it is under DDP instead of wrapping it in its own. With
    ``keyed=True`` it yields ``(index, sample_seed)`` pairs for a ``SeededSamples`` data set: each draw's
    augmentation seed is a function of (seed, epoch, its place in the epoch).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        keyed: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # indices of this epoch (for this process) already consumed
        self.keyed = keyed

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a resume position belongs to the epoch it was saved in
        super().set_epoch(epoch)

    def resume(self, epoch: int, start: int) -> None:
        """Make the next iteration the rest of ``epoch``, from its ``start``-th index on."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This process's indices of the current epoch, in order (the sampling rule; subclasses change it)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Any]:
        indices = self.indices()
        start, self.start = self.start, 0
        if not self.keyed:
            return iter(indices[start:])
        epoch_key = _mix(_mix(self.seed) ^ self.epoch)
        # this process's k-th index is the epoch's (rank + k * num_replicas)-th draw (DistributedSampler's stride)
        places = range(self.rank + start * self.num_replicas, self.total_size, self.num_replicas)
        return iter([(index, _mix(epoch_key ^ place) >> 1) for index, place in zip(indices[start:], places)])


def _mix(x: int) -> int:
    """splitmix64's finaliser: well-spread 64-bit seeds from consecutive integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` is ``dataset[index]`` drawn with torch's generator seeded by ``seed``.

    So a sample's random augmentation (crop, flip, RandAugment: torch's generator) depends on the run's seed,
    the epoch and its place in the epoch only: not on the number of loader workers, nor on which worker drew
    it, nor on where a resumed run started. A resume mid-epoch then gives the same images, whatever
    ``num_workers``. The generator's state is put back afterwards: the caller's (the main process's, with
    ``num_workers=0``) is left as it was. A plain index (a replaced sampler) is passed through.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        # The CPU generator alone, which the transforms draw from: torch.manual_seed would also queue a seeding of
        # every CUDA device, at 40x the cost per sample.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


class ResumableLoader(DataLoader):
    """A DataLoader over a ``ResumableSampler`` whose position in the epoch is saved with the checkpoint.

    Lightning stores ``state_dict()`` of train loaders that have one and hands it back to ``load_state_dict``
    on resume; the next epoch then yields only the batches not yet trained on. ``len()`` stays the full epoch,
    which is what Lightning's resumed batch count expects. Lightning does not prefetch from sized loaders, so
    the batches yielded are the batches trained on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = 0  # batches of the current epoch yielded so far

    def __iter__(self) -> Iterator[Any]:  # a generator: the sampler is read at the first batch, after set_epoch
        sampler = self.sampler
        start = sampler.start if isinstance(sampler, ResumableSampler) else 0
        self._position = start // self.batch_size
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, ResumableSampler):
            return {}
        return {"epoch": self.sampler.epoch, "batches": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        if not isinstance(self.sampler, ResumableSampler):
            rank_zero_warn("the train loader's sampler was replaced (e.g. overfit_batches): it restarts its epoch")
            return
        self.sampler.resume(state["epoch"], state["batches"] * self.batch_size)


def resumable_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int | None = None,
    sampler: ResumableSampler | None = None,
    **kwargs: Any,
) -> ResumableLoader:
    """A shuffled ``ResumableLoader`` of ``dataset`` for this process (its share under DDP), each sample
    augmented with its own seed (``SeededSamples``).

    Args:
        dataset: A map-style data set.
        batch_size: Images per process and step.
        seed: Seed of the order; None: the training seed (``PL_GLOBAL_SEED``, set by ``seed_everything``), as
            Lightning's own distributed sampler does.
        sampler: Another sampling rule (e.g. ``RepeatedAugSampler``); None: a plain shuffle of this process's
            share. It is made to yield keyed indices, which the ``SeededSamples`` wrapper here reads.
        **kwargs: Other ``DataLoader`` arguments (num_workers, drop_last, pin_memory, ...).
    """
    from vit_exp.data._distributed import rank_and_world_size

    rank, world_size = rank_and_world_size()
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) if seed is None else seed
    if sampler is None:
        sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
    sampler.keyed = True
    # Its own generator: creating the iterator then draws no number from the global RNG, whose state ExactResume
    # restores on resume and which dropout and drop-path use.
    generator = torch.Generator().manual_seed(seed)
    return ResumableLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)
