"""What a run's checkpoint is: the files ``train.py`` writes, how they are found again and read back.

Reading the run config and hyper-parameters that vit_exp stores in its Lightning checkpoints (a ``.ckpt``
file, or the directory of a sharded FSDP checkpoint, which holds ``meta.pt`` beside the shards).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vit_exp.errors import ConfigError

SHARDED_META = "meta.pt"  # in a sharded (FSDP) checkpoint directory, what Lightning saves besides the weights


def no_checkpoint(what: str, path: Path) -> ConfigError:
    """The error for a checkpoint path with nothing there; it names the previous checkpoint when a sharded save
    was cut short between its two renames and left it aside."""
    from vit_exp.resilience import swap_names  # only on this error path: it imports Lightning

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

    from vit_exp.models.checkpoint import DCP_INDEX, is_distributed_checkpoint

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
