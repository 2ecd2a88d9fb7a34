"""Experiment tracking that never blocks a run: W&B goes offline by itself when it has no key."""

from __future__ import annotations

import logging
import netrc
import os
from typing import Any

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def has_wandb_key() -> bool:
    """Whether W&B credentials are present: ``WANDB_API_KEY``, or the ``~/.netrc`` entry of ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_logger(
    project: str,
    save_dir: str,
    offline: bool | None = None,
    init_timeout: float = 60.0,
    **kwargs: Any,
) -> Any:
    """A Lightning ``WandbLogger`` that logs online with a key and offline without one.

    Offline runs are written under ``save_dir/wandb/offline-run-*``; upload them later with
    ``wandb sync``. ``WANDB_MODE`` (online, offline, disabled), when set, is obeyed as it is.

    Args:
        project: W&B project.
        save_dir: Where the run files go (the run directory).
        offline: Force offline (True) or online (False); None decides from ``WANDB_MODE`` and the key.
        init_timeout: Seconds W&B may take to start before the run fails instead of hanging.
        **kwargs: Passed on to ``WandbLogger`` (name, tags, entity, log_model, ...).
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE")
    if offline is None:
        offline = mode in ("offline", "dryrun") if mode else not has_wandb_key()
        if offline and not mode:
            log.info("W&B: no API key found, logging offline to %s/wandb (upload later with `wandb sync`)", save_dir)
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # also for the W&B service process and DDP children
    settings = wandb.Settings(init_timeout=init_timeout, silent=True)
    return WandbLogger(project=project, save_dir=save_dir, offline=offline, settings=settings, **kwargs)
