"""What a run's checkpoint is: the files ``train.py`` writes, how they are found again and read back.

- Reading: the run config and hyper-parameters stored in our Lightning checkpoints (``checkpoint_hparams``,
  ``checkpoint_config``), and the weights (``load_weights``), from a ``.ckpt`` file or from the directory of a
  sharded FSDP checkpoint (``meta.pt`` beside the shards; ``vit_exp.checkpoints.sharded``). A run with an EMA of
  its weights (``callbacks.ema``) stores both: the EMA is read unless ``use_ema=False``.
- ``resume=auto`` (``resume_path``): continue from the run directory's ``checkpoints/last.ckpt`` if there is one.
- Writing, whole or not at all (``vit_exp.checkpoints.atomic``): ``AtomicCheckpointIO`` for files,
  ``AtomicFSDPStrategy`` for sharded directories, which are written beside the old one and swapped in by two
  renames (``swap_names``); ``recover_interrupted_swap`` finishes a swap that a crash cut short.

This module imports neither torch nor Lightning at its top: the command line checks paths with it at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vit_exp.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from torch import nn

log = logging.getLogger(__name__)

SHARDED_META = "meta.pt"  # in a sharded (FSDP) checkpoint directory, what Lightning saves besides the weights
RESUME_MODES = (None, "auto")
EMA_TRAINED_KEY = "current_model_state"  # where Lightning's WeightAveraging saves the trained weights beside the EMA


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


def resume_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` should start from: ``ckpt_path``, or with ``resume=auto`` the run's last one.

    ``resume=auto`` looks in the run directory itself (``paths.output_dir``), at the file the
    ``callbacks.last_checkpoint`` callback writes (``checkpoints/last.ckpt``): give the run a fixed directory
    (``hydra.run.dir=outputs/my_run``, or a SLURM job id) and the same command continues it after a crash or a
    requeue, and starts it when there is nothing to continue. A sharded save that died between its two renames
    left the previous checkpoint at ``.last.ckpt.old``: it is put back first (``recover_interrupted_swap``).

    Raises:
        ConfigError: an unknown ``resume`` value, both ``resume=auto`` and ``ckpt_path``, ``resume=auto``
            without a last-checkpoint callback, or a checkpoint with an EMA (``callbacks.ema``) resumed without one.
    """
    from omegaconf import OmegaConf

    path = _resume_path(cfg)
    if path and OmegaConf.select(cfg, "callbacks.ema.decay") is None and _holds_ema(path):
        raise ConfigError(
            f"{path} holds an EMA of the weights (callbacks.ema) beside them, and this run has no EMA, so it would "
            f"go on from the EMA; resume with callbacks.ema.decay={_stored_decay(path)}, or start a new run from the "
            f"EMA with model.pretrained={path}"
        )
    return path


def _resume_path(cfg: DictConfig) -> str | None:
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


def no_checkpoint(what: str, path: Path) -> ConfigError:
    """The error for a checkpoint path with nothing there; it names the previous checkpoint when a sharded save
    was cut short between its two renames and left it aside."""
    old = swap_names(path)[1]
    if old.exists():
        return ConfigError(
            f"{what} does not exist: a save stopped half-way and left the previous checkpoint at {old}; "
            f"resume=auto puts it back, or rename it to {path.name}"
        )
    return ConfigError(f"{what} does not exist; pass a local checkpoint (a file, or a sharded checkpoint's directory)")


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The hyper-parameters that vit_exp stores in its Lightning checkpoints: ``config`` (the run config),
    ``class_names``, ``num_classes``, ...; from the file, or from ``meta.pt`` in a sharded checkpoint's directory.

    Raises:
        ConfigError: nothing at ``path``, a directory that is no sharded checkpoint, or a file that holds no
            vit_exp config (e.g. a published weights file).
    """
    import torch

    from vit_exp.checkpoints.sharded import DCP_INDEX, is_distributed_checkpoint

    path = Path(path)
    if not path.exists():
        raise no_checkpoint(f"ckpt_path {path}", path)
    file = path / SHARDED_META if path.is_dir() else path
    if path.is_dir() and not (is_distributed_checkpoint(path) and file.is_file()):
        raise ConfigError(
            f"{path} is a directory but not a sharded checkpoint of ours (those hold {DCP_INDEX} and "
            f"{SHARDED_META}; a save that did not finish lacks them); pass a .ckpt written by train.py"
        )
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # not a torch file at all (an image, a partial download), or an unsafe pickle
        raise ConfigError(
            f"cannot read {path} as a checkpoint ({type(e).__name__}); pass a .ckpt written by train.py, "
            f"or published weights as model.pretrained=..."
        ) from None
    hparams = (saved.get("hyper_parameters") or {}) if isinstance(saved, dict) else {}
    if not hparams.get("config"):
        raise ConfigError(
            f"{path} is not a checkpoint written by train.py (it stores no run config); to evaluate published "
            f"weights use model=<family> res=<size> model.pretrained={path}"
        )
    return hparams


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The run config that vit_exp stored in one of its Lightning checkpoints (a file or a sharded directory).

    Raises:
        ConfigError: as ``checkpoint_hparams``.
    """
    return checkpoint_hparams(path)["config"]


def load_weights(model: nn.Module, path: str | Path, strict: bool = True, use_ema: bool = True) -> None:
    """Load the weights of a checkpoint into ``model``: a run's ``.ckpt`` file or sharded (FSDP) directory, or
    any file that ``vit_exp.models.load_checkpoint`` reads (published weights), adapting resolution and head.

    A run trained with an EMA of its weights (``callbacks.ema``) saved the EMA as ``state_dict`` and the trained
    weights as ``current_model_state`` (Lightning's ``WeightAveraging`` format): ``use_ema=False`` reads the latter.
    Other files have one set of weights, which either value reads.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a directory that is no sharded checkpoint, a damaged file, or weights that do not fit.
    """
    from vit_exp.models.checkpoint import load_checkpoint, load_state_dict, unwrap_state_dict

    if not Path(path).is_dir():
        trained = None if use_ema else trained_weights(path)
        if trained is None:
            return load_checkpoint(model, path, strict=strict)
        log.info("%s: the trained weights, not their EMA (use_ema=false)", path)
        return load_state_dict(model, unwrap_state_dict(trained), path, strict=strict)
    from vit_exp.checkpoints.sharded import load_distributed_checkpoint

    load_state_dict(model, unwrap_state_dict(load_distributed_checkpoint(path)), path, strict=strict)


def _stored_decay(path: str | Path) -> Any:
    """The EMA decay in the run config a checkpoint stores (``...`` when it stores none)."""
    try:
        return ((checkpoint_config(path).get("callbacks") or {}).get("ema") or {}).get("decay") or "..."
    except ConfigError:
        return "..."


def _holds_ema(path: str | Path) -> bool:
    """Whether a checkpoint to resume from holds an EMA beside its weights; an unreadable file (a save cut short)
    says no here, and Lightning's loader reports it where it reads the file."""
    try:
        return trained_weights(path) is not None
    except Exception:  # noqa: BLE001 (any reason the file cannot be read: truncated, empty, not a zip)
        return False


def trained_weights(path: str | Path) -> dict[str, Any] | None:
    """The trained weights (``current_model_state``) of a ``.ckpt`` whose ``state_dict`` is their EMA; else None."""
    if not (Path(path).suffix == ".ckpt" and Path(path).is_file()):  # a sharded directory has no EMA (no FSDP)
        return None
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return saved.get(EMA_TRAINED_KEY) if isinstance(saved, dict) else None
