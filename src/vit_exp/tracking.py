"""Experiment tracking that never blocks a run: W&B goes offline by itself when it has no key.

One W&B run per run directory: its id is kept in ``RUN_DIR/wandb/run_id``, so a resumed or requeued job logs
into the same run; the jobs of a sweep share a group; each run ends with the job's real exit status.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from vit_exp.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"
RUN_ID_FILE = "wandb/run_id"  # in the run directory


def has_wandb_key() -> bool:
    """Whether W&B credentials are present: ``WANDB_API_KEY``, or the ``~/.netrc`` entry of ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def run_id(save_dir: str | Path) -> str:
    """The W&B run id of this run directory: the one saved in ``RUN_DIR/wandb/run_id``, or a new one saved there."""
    import secrets

    from vit_exp import compat

    path = Path(save_dir) / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    new_id = secrets.token_hex(6)  # W&B's own id maker is internal (wandb.sdk.lib.runid)
    if not compat.process_rank():  # other DDP ranks log nothing; only rank 0 keeps the id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_id + "\n")
    return new_id


def _sweep_identity() -> tuple[str | None, str | None]:
    """(group, name) of the current job when it is part of a Hydra multirun: its sweep directory and overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None
    hc = HydraConfig.get()
    return str(hc.sweep.dir), hc.job.override_dirname or f"job {hc.job.num}"


class ScopedWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger``, whose offline mode is its own run's: Lightning sets ``WANDB_MODE`` for the whole
    process when it starts an offline run (W&B reads it then); it is put back as it was once the run has started."""

    @property
    def experiment(self) -> Any:
        saved = os.environ.get("WANDB_MODE")
        try:
            return super().experiment
        finally:
            if saved is None:
                os.environ.pop("WANDB_MODE", None)
            else:
                os.environ["WANDB_MODE"] = saved


def wandb_logger(
    project: str,
    save_dir: str,
    offline: bool | None = None,
    init_timeout: float = 60.0,
    group: str | None = None,
    name: str | None = None,
    **kwargs: Any,
) -> Any:
    """A Lightning ``WandbLogger`` that logs online with a key and offline without one.

    Offline runs are written under ``save_dir/wandb/offline-run-*``; upload them later with
    ``wandb sync``. ``WANDB_MODE`` (online, offline, disabled), when set, is obeyed as it is. The mode is this
    logger's own, not the process's: a later job of a sweep decides afresh (``ScopedWandbLogger``).

    Args:
        project: W&B project.
        save_dir: Where the run files go (the run directory).
        offline: Force offline (True) or online (False); None decides from ``WANDB_MODE`` and the key.
        init_timeout: Seconds W&B may take to start before the run fails instead of hanging.
        group: W&B group; None: a sweep's jobs are grouped by their sweep directory.
        name: Run name; None: W&B's, or in a sweep the job's overrides.
        **kwargs: Passed on to ``WandbLogger`` (tags, entity, log_model, ...).
    """
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") if mode else not has_wandb_key()
        if offline and not mode:
            log.info("W&B: no API key found, logging offline to %s/wandb (upload later with `wandb sync`)", save_dir)
    if offline and kwargs.get("log_model"):
        raise ConfigError(
            f"logger.wandb.log_model={kwargs['log_model']} uploads checkpoints, which an offline W&B run cannot; "
            "set logger.wandb.log_model=false, or log in (`wandb login`) to log online"
        )
    settings = wandb.Settings(init_timeout=init_timeout, silent=True)
    sweep_group, sweep_name = _sweep_identity()
    kwargs.setdefault("id", run_id(save_dir))
    return ScopedWandbLogger(
        project=project,
        save_dir=save_dir,
        offline=offline,
        settings=settings,
        group=group or sweep_group,
        name=name or sweep_name,
        resume="allow",  # the same id again (a resumed run) continues that run
        **kwargs,
    )


@contextlib.contextmanager
def finish_runs(loggers: Sequence[Any]) -> Iterator[None]:
    """Around a job: end its W&B runs with the job's exit status (0, or 1 when it raised; a preempted job is
    marked preempting), so a failed job shows as failed and the next job of a sweep in this process gets a run
    of its own (Lightning leaves W&B runs open, and a new WandbLogger would reuse the open one)."""
    try:
        yield
    except BaseException as e:
        from vit_exp.errors import Preempted

        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 1
        _finish(loggers, code, preempted=isinstance(e, Preempted))
        raise
    _finish(loggers, 0)


def _finish(loggers: Sequence[Any], exit_code: int, preempted: bool = False) -> None:
    from vit_exp import compat

    for logger in loggers:
        run = compat.started_experiment(logger) if isinstance(logger, WandbLogger) else None
        if run is None or not hasattr(run, "finish"):  # never started, or a rank > 0 stand-in
            continue
        if preempted:
            run.mark_preempting()
        run.finish(exit_code=exit_code)
