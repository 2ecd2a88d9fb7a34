"""hydra-submitit-launcher with one task per GPU: the tasks of a job are its DDP ranks.

``conf/launcher/slurm.yaml`` and ``local.yaml`` start ``trainer.devices`` tasks per node for each job; every task
runs the job. Rank 0 runs it as usual. Any other rank composes the same config with
``vit_exp.launch.QUIET_RANK`` (no ``.hydra/``, no log file) and without Hydra callbacks (no sweep record), so it
writes nothing of its own in the job's directory: Lightning writes metrics and checkpoints from rank 0.
On SLURM, Lightning reads the ranks from SLURM's variables; local tasks get them from
``vit_exp.launch.export_torch_env``.

A job whose process died (killed for memory, a segfault) is reported as a failed job, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import open_dict

log = logging.getLogger(__name__)

try:  # a dependency of vit_exp; should it be missing, Hydra's plugin scan must not fail on this module
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # pragma: no cover
    submitit_launcher = None


def make_executor(executor: str, params: dict[str, Any]) -> Any:
    """The ``submitit.AutoExecutor`` of the launcher config ``params`` (``hydra.launcher`` without ``_target_``).

    On SLURM, ``srun --kill-on-bad-exit=1``: a task that fails ends the job's other tasks, which would otherwise
    wait for it in a collective until the process group's timeout.

    Raises:
        ConfigError: ``tasks_per_node`` (``trainer.devices``) is not a number of devices.
    """
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from vit_exp.errors import ConfigError

    params = dict(params)
    tasks = params.get("tasks_per_node")
    if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 1:
        raise ConfigError(
            f"trainer.devices={tasks}: the launcher starts one task per device (hydra.launcher.tasks_per_node) and "
            "needs their number; set trainer.devices to the number of GPUs per node (e.g. trainer.devices=8), "
            "not -1 or auto"
        )
    if executor == "slurm":
        params.setdefault("srun_args", ["--kill-on-bad-exit=1"])
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{executor}_max_num_timeout"] = params.pop("max_num_timeout")
    common = set(OmegaConf.structured(BaseQueueConf).keys())  # the others are the executor's own
    auto = submitit.AutoExecutor(cluster=executor, **init)
    auto.update_parameters(**{k if k in common else f"{executor}_{k}": v for k, v in params.items()})
    return auto


def _remove_unused_sweep_dir(sweep_dir: Path) -> None:
    """Remove the sweep directory when it holds nothing but the ``multirun.yaml`` Hydra wrote before the launcher
    stopped (a directory given with other files in it stays); the default ``outputs/multirun/DATE/TIME``'s DATE
    goes too if now empty."""
    if sweep_dir.is_dir() and [p.name for p in sweep_dir.iterdir()] == ["multirun.yaml"]:
        shutil.rmtree(sweep_dir, ignore_errors=True)
        if sweep_dir.parent.parent.name == "multirun":
            with contextlib.suppress(OSError):
                sweep_dir.parent.rmdir()


def _what_failed(error: Exception) -> str:
    """One line from submitit's error: which task failed and, from its traceback, the exception that ended it."""
    first, *_ = str(error).splitlines() or [""]
    parts = str(error).split("-" * 22)  # submitit puts the task's traceback between two such rules
    trace = [line.strip() for line in parts[1].splitlines() if line.strip()] if len(parts) > 2 else []
    first = first.rstrip(":").replace(" with trace", "")
    return f"{first}: {trace[-1]}" if trace else first


class _NoCallbacks:
    """Hydra callbacks of a rank other than 0: none (the sweep record is rank 0's)."""

    def on_job_start(self, **kwargs: Any) -> None:
        pass

    def on_job_end(self, **kwargs: Any) -> None:
        pass


if submitit_launcher is not None:

    class _RanksAsTasks(submitit_launcher.BaseSubmititLauncher):
        def __call__(
            self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str, singleton_state: Any
        ) -> JobReturn:
            import submitit

            from vit_exp import compat, launch

            env = submitit.JobEnvironment()
            rank = env.global_rank
            if env.num_tasks > 1:
                if self._EXECUTOR == "local":
                    launch.export_torch_env(
                        rank, env.local_rank, env.num_tasks, env.num_tasks // env.num_nodes, env.job_id
                    )
                if rank != 0:
                    sweep_overrides = [*sweep_overrides, *launch.QUIET_RANK]
                    self.hydra_context = replace(self.hydra_context, callbacks=_NoCallbacks())
            ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
            if rank != 0 and ret.status == JobStatus.FAILED:
                # A non-zero exit: SLURM (srun --kill-on-bad-exit) then ends the job's other tasks, which would
                # otherwise wait for this rank in a collective until the process group's timeout.
                raise compat.job_return_value(ret)
            return ret

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            """Submit one job per override list and wait for them all; a job whose process died is FAILED."""
            import submitit
            from hydra.core.singleton import Singleton

            from vit_exp.errors import ConfigError

            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            try:
                executor = make_executor(self._EXECUTOR, self.params)
            except ConfigError as e:  # before any job: one line, as a run's own errors (Hydra would print a trace)
                _remove_unused_sweep_dir(sweep_dir)
                sys.exit(f"error: {e}")
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            log.info("submitit %s launcher, sweep output dir: %s", self._EXECUTOR, sweep_dir)
            nums = range(initial_job_idx, initial_job_idx + len(job_overrides))
            for num, overrides in zip(nums, job_overrides):
                log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            state = Singleton.get_state()
            args = [
                (list(o), "hydra.sweep.dir", num, f"job_id_for_{num}", state) for num, o in zip(nums, job_overrides)
            ]
            jobs = executor.map_array(self, *zip(*args))

            returns = []
            for num, overrides, job in zip(nums, job_overrides, jobs):
                try:
                    returns.append(job.results()[0])
                except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
                    returns.append(self._died(num, overrides, e))
            return returns

        def _died(self, num: int, overrides: Sequence[str], error: Exception) -> JobReturn:
            """The return of job ``num``, whose process died (or a rank of it failed): FAILED, and recorded by the
            Hydra callbacks here (the sweep summary), since the job could not do it itself."""
            from vit_exp.errors import RankFailedError

            error = RankFailedError(_what_failed(error))
            log.error("job #%d (%s) failed: %s", num, " ".join(filter_overrides(overrides)), error)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
            ret.return_value = error
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra):
                config.hydra.job.num = num
                config.hydra.runtime.output_dir = os.path.abspath(
                    Path(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))
                )
            self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
            return ret

    class SlurmLauncher(_RanksAsTasks):
        _EXECUTOR = "slurm"

    class LocalLauncher(_RanksAsTasks):
        _EXECUTOR = "local"
