"""Lightning's DDP processes inside Hydra jobs: every rank in rank 0's run directory, writing nothing of its own,
one job after another, and a rank that fails ends its job, not the sweep.

Two ways to start the ranks of a job:

- Lightning starts ranks 1..N-1 itself (``hw=ddp``, ``hw=ddp_sim`` under Hydra's basic launcher or one submitit
  task per job). It runs the script again, and under Hydra it re-runs the whole command line (``sys.argv``) with
  ``hydra.run.dir`` set to the *run* directory, which breaks two ways: in a sweep (``-m``) each child starts the
  whole sweep again, and the children write Hydra files of their own (``.hydra``, a log file per rank).
  ``child_command`` replaces it: a child composes exactly this job's config (the job's own overrides, never
  ``-m``), in this job's output directory, and writes nothing there (``QUIET_RANK``).
- The cluster starts one process per GPU (``launcher=slurm``: a submitit task per GPU; ``launcher=local`` does
  the same on one machine). ``hydra_plugins.vit_exp_launcher`` gives tasks other than 0 the same ``QUIET_RANK``
  overrides and no Hydra callbacks (no sweep record of their own), and ``export_torch_env`` tells Lightning the
  ranks of local tasks (SLURM's it reads itself).

Lightning watches the children it starts and, when one exits with an error, SIGKILLs them all *and its own
process*: a sweep running in that process dies with the job. ``RankWatcher`` replaces that watcher: it stops
the other children, aborts an NCCL process group so that the job's collectives fail instead of hanging, and
leaves the job to fail with ``RankFailedError``; only if the job is still stuck after ``GRACE_S`` does it end the
process as Lightning would. ``ddp_job`` wraps a job's fit and test: it puts both in place of Lightning's for the
job only (``vit_exp.compat.launcher_hooks``, undone when the job ends), turns the failure into that error and
cleans up, so that the next job of a sweep run by the same process starts its own ranks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from vit_exp.errors import RankFailedError

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)

# Set by Lightning's launcher in this process for its children; a second job must not find them.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
CHILD_WAIT_S = 120  # how long the end of a job waits for its other ranks to exit
GRACE_S = 120.0  # how long a job whose rank failed may take to fail by itself before its process is ended
# Hydra overrides for a rank other than 0: it composes the job's config but writes no .hydra/ and no log file
# (Python's default logging: warnings and errors to stderr, which the launcher keeps).
QUIET_RANK = ("hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none")


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
        *QUIET_RANK,
    ]
    return command, get_original_cwd()


class RankWatcher(threading.Thread):
    """Watches the ranks this process started; when one fails, fails the job instead of ending the process.

    Args:
        procs: The child processes, rank 1 first.
        poll_s: How often their state is read.
        grace_s: After a failure, how long the job may take to fail by itself (its next collective errors out)
            before the process is ended as Lightning's own watcher would, so that no job hangs forever.
    """

    current: RankWatcher | None = None  # of the job running in this process

    def __init__(self, procs: Sequence[subprocess.Popen], poll_s: float = 1.0, grace_s: float = GRACE_S) -> None:
        super().__init__(daemon=True, name="vit_exp-rank-watcher")
        self.procs, self.poll_s, self.grace_s = list(procs), poll_s, grace_s
        self.failure: str | None = None
        self._done = threading.Event()

    @classmethod
    def start_for(cls, procs: list[subprocess.Popen]) -> None:
        """Lightning's ``_launch_process_observer(procs)``."""
        cls.current = cls(procs)
        cls.current.start()

    def stop(self) -> None:
        """The job has ended, one way or the other: nothing more to do."""
        self._done.set()

    def run(self) -> None:
        while not self._done.wait(self.poll_s):
            failed = self._failed_rank()
            if failed:
                self._fail(*failed)
                return
            if all(proc.returncode == 0 for proc in self.procs):
                return

    def _failed_rank(self) -> tuple[int, int] | None:
        codes = [proc.poll() for proc in self.procs]
        return next(((rank, code) for rank, code in enumerate(codes, 1) if code), None)

    def failed_rank(self, wait_s: float = 10.0) -> str | None:
        """Which rank failed, if one did; waits up to ``wait_s`` for one to exit (this process's error may have
        come first: a collective fails as soon as the other rank's connection closes)."""
        for _ in range(int(wait_s / 0.1)):
            if self.failure or self._failed_rank() or all(proc.poll() is not None for proc in self.procs):
                break
            self._done.wait(0.1)
        if self.failure is None and (failed := self._failed_rank()):
            self.failure = self._describe(*failed)
        return self.failure

    def _describe(self, rank: int, code: int) -> str:
        return f"rank {rank} (pid {self.procs[rank - 1].pid}) exited with code {code}"

    def _fail(self, rank: int, code: int) -> None:
        self.failure = self._describe(rank, code)
        log.error("%s; stopping the job's other ranks", self.failure)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # SIGKILL, as Lightning: a rank stuck in a collective ignores SIGTERM
        _abort_nccl()
        if self._done.wait(self.grace_s):
            return
        log.error("the job did not stop within %.0f s of the failure of %s: ending this process", self.grace_s,
                  self.failure)  # fmt: skip
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def ddp_job(trainer: pl.Trainer) -> Iterator[None]:
    """Around one job's fit and test: Lightning's DDP/FSDP launcher starts ranks with ``child_command`` (when Hydra
    is in use) and watches them with ``RankWatcher``; a failed rank becomes ``RankFailedError``; afterwards wait for
    the ranks this process started, close the process group, remove the launcher's environment variables and
    give Lightning back its own launcher functions.

    Raises:
        RankFailedError: another rank exited with an error during the job.
    """
    from vit_exp import compat

    saved = {k: os.environ.get(k) for k in DDP_ENV}
    RankWatcher.current = None
    try:
        with compat.launcher_hooks(child_command, RankWatcher.start_for):
            yield
    except Exception as e:
        watcher = RankWatcher.current
        if watcher is not None and watcher.failed_rank():
            raise RankFailedError(
                f"{watcher.failure}, so this job stopped (here: {type(e).__name__}); that rank's own error is in "
                "its output above. Other jobs of a sweep go on"
            ) from e
        raise
    finally:
        watcher, RankWatcher.current = RankWatcher.current, None
        if watcher is not None:
            watcher.stop()
        launcher = getattr(trainer.strategy, "launcher", None)
        children = list(getattr(launcher, "procs", None) or [])
        if children:
            for proc in children:
                try:
                    proc.wait(timeout=CHILD_WAIT_S)
                except subprocess.TimeoutExpired:  # a rank stuck in a collective: end it
                    proc.kill()
            _destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def export_torch_env(global_rank: int, local_rank: int, world_size: int, local_world_size: int, job_id: str) -> None:
    """The variables by which Lightning finds ranks that something else started (``LightningEnvironment``),
    for the processes of one job on this machine; all of them derive the same port from the job id."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(random.Random(job_id).randint(20_000, 60_000)),
        RANK=str(global_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(local_world_size),
        NODE_RANK="0",
    )


def _abort_nccl() -> None:
    """Abort this process's NCCL process group, so that a collective waiting for a dead rank returns with an
    error. (Gloo's collectives fail by themselves when the peer's connection closes.)"""
    import torch.distributed as dist

    try:
        if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
            from vit_exp import compat

            compat.abort_process_group()
    except Exception as e:  # noqa: BLE001  (the grace period still ends a hung job)
        log.warning("could not abort the NCCL process group: %s", e)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
