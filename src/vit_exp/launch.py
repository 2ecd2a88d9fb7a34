"""Lightning's DDP launcher inside a Hydra job: every rank in rank 0's run directory, one job after another.

Lightning starts ranks 1..N-1 by running the script again. Under Hydra it re-runs the whole command line
(``sys.argv``) with ``hydra.run.dir`` set to the *run* directory, which breaks two ways: in a sweep (``-m``)
each child starts the whole sweep again, and the children write Hydra files of their own (``.hydra``, a log
file per rank). ``child_command`` replaces it: a child composes exactly this job's config (the job's own
overrides, never ``-m``), in this job's output directory, and writes nothing there (no ``.hydra``, no log
file; loggers and checkpoints write on rank 0 only).

``ddp_job`` cleans up after a job that launched children, so that the next job of a sweep run by the same
process (Hydra's basic launcher) starts its own ranks instead of hanging on the previous job's environment.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Set by Lightning's launcher in this process for its children; a second job must not find them.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
CHILD_WAIT_S = 120  # how long the end of a job waits for its other ranks to exit


def child_command(local_rank: int) -> tuple[Sequence[str], str]:
    """(command, cwd) that starts DDP rank ``local_rank`` of the current Hydra job.

    Same signature as ``lightning.fabric.strategies.launchers.subprocess_script._hydra_subprocess_cmd``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    searchpath = [o for o in hc.overrides.hydra if o.startswith(("hydra.searchpath", "+hydra.searchpath"))]
    command += [
        "--config-name",
        hc.job.config_name,
        *hc.overrides.task,  # this job's overrides: a sweep's choices for this job, not the sweep itself
        *searchpath,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.mode=RUN",  # a config that sets MULTIRUN (hparams_search) must not start a sweep per rank
        "hydra.output_subdir=null",  # no .hydra/ of its own
        "hydra/job_logging=none",  # no log file of its own (Python's default: warnings to stderr)
        "hydra/hydra_logging=none",
    ]
    return command, get_original_cwd()


def use_child_command() -> None:
    """Make Lightning's DDP/FSDP launcher start children with ``child_command`` (when Hydra is in use)."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    if not hasattr(subprocess_script, "_hydra_subprocess_cmd"):  # a Lightning that changed its launcher
        raise RuntimeError(
            "lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd is gone in this "
            "Lightning version; vit_exp.launch must be updated to start DDP ranks under Hydra"
        )
    subprocess_script._hydra_subprocess_cmd = child_command


@contextlib.contextmanager
def ddp_job(trainer: pl.Trainer) -> Iterator[None]:
    """Around one job's fit and test: afterwards wait for the ranks this process started, stop Lightning's
    watcher of them, close the process group and remove the launcher's environment variables."""
    saved = {k: os.environ.get(k) for k in DDP_ENV}
    try:
        yield
    finally:
        launcher = getattr(trainer.strategy, "launcher", None)
        children = list(getattr(launcher, "procs", None) or [])
        if children:
            # Lightning's watcher SIGKILLs this process when a child exits non-zero; that would end a sweep
            # whose job failed on every rank. The job's own exception reports the failure.
            for thread in threading.enumerate():
                if thread.name == "child-process-observer":
                    thread._child_processes = []  # type: ignore[attr-defined]
            for proc in children:
                try:
                    proc.wait(timeout=CHILD_WAIT_S)
                except Exception:  # noqa: BLE001  (a rank stuck in a collective: end it)
                    proc.kill()
            _destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
