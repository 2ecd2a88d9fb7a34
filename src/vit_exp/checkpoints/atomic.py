"""Checkpoints written whole or not at all: ``AtomicCheckpointIO`` (files) and ``AtomicFSDPStrategy`` (FSDP's
sharded directories). Named by ``trainer.plugins`` in ``conf/train.yaml`` and by ``conf/hw/fsdp.yaml``."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from lightning_utilities.core.apply_func import apply_to_collection

from vit_exp import compat
from vit_exp.checkpoints import swap_names


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the target, fsync, then ``os.replace`` over it; with
    ``background``, written by a thread while training goes on.

    A crash, a full disk or a SIGKILL during the save leaves the previous checkpoint as it was (Lightning's own
    writer buffers the whole checkpoint in memory and, for local files, moves it from the system temp directory,
    which is a copy, not an atomic rename, when that is another file system). Remote paths (``s3://``) go
    through Lightning's writer unchanged.

    ``background``: the caller's thread copies the checkpoint's tensors (to host memory: a point-in-time
    snapshot the next optimizer step cannot change) and returns; one writer thread serialises, writes, fsyncs
    and renames, in the order the saves and removals were asked for. Lightning's ``AsyncCheckpointIO`` does the
    first half, but it removes files at once (a removal can overtake a save still queued for that file), reads
    a file still being written, and keeps cloned accelerator tensors in accelerator memory. A file that is read
    (``load_checkpoint``), a ``flush()`` and ``teardown()`` (the end of fit and of test) wait for every write
    before it; a write that failed raises there, or at the next save, and the file it was replacing is intact.
    A SIGKILL loses at most the saves still queued: the last checkpoint on disk is then the one before, whole.
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        self.background = background
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            self.flush()
            return super().save_checkpoint(checkpoint, path, storage_options)
        if not self.background:
            return save_atomically(checkpoint, path)
        self._raise_failed()
        snapshot = apply_to_collection(checkpoint, torch.Tensor, _host_copy)
        self._submit(save_atomically, snapshot, path)

    def remove_checkpoint(self, path: str | Path) -> None:
        if self.background and "://" not in str(path):
            self._submit(super().remove_checkpoint, path)  # after the saves queued before it
        else:
            super().remove_checkpoint(path)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.flush()
        return super().load_checkpoint(path, *args, **kwargs)

    def flush(self) -> None:
        """Wait until every queued save and removal is done; raise the first that failed."""
        futures.wait(self._pending)
        self._raise_failed()

    def teardown(self) -> None:
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending.append(self._writer.submit(fn, *args))

    def _raise_failed(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            if future.exception() is not None:
                raise future.exception()


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in host memory that later in-place updates of ``tensor`` leave as it is."""
    return tensor.detach().to("cpu", copy=True)


def save_atomically(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save(checkpoint)`` to the local file ``path``, replacing it whole or not at all."""
    with replaced_whole(path) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)


@contextlib.contextmanager
def replaced_whole(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; after the block it is fsynced and renamed over
    ``path`` (same directory: ``os.replace`` is a rename), and an error in the block leaves ``path`` as it was and
    no temporary file. The writer of ``save_atomically`` and of ``vit_exp.xla.AtomicXLACheckpointIO``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        if compat.fsdp_state_dict_type(self) != "sharded" or storage_options is not None:
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
            with open(partial / compat.sharded_meta_filename(), "rb") as f:
                os.fsync(f.fileno())
            if path.exists():
                _remove(old)  # a swap that died after its second rename left it; path is whole
                path.rename(old)
            partial.rename(path)
            _remove(old)
        self.barrier("AtomicFSDPStrategy.save_checkpoint:swapped")  # no rank reads path before it is swapped in

    def remove_checkpoint(self, filepath: str | Path) -> None:
        super().remove_checkpoint(filepath)  # rank 0, through the checkpoint_io plugin: a file or a directory
        if self.is_global_zero and "://" not in str(filepath):
            for leftover in swap_names(Path(filepath)):
                _remove(leftover)
