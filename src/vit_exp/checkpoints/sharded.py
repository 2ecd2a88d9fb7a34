"""Reading a sharded (FSDP) checkpoint directory, as torch.distributed.checkpoint (DCP) writes it, in one process.

An FSDP run with ``state_dict_type="sharded"`` saves a directory: one ``__R_0.distcp`` file per rank, DCP's
``.metadata`` index and Lightning's ``meta.pt``. Its index is unpickled through an allow-list first and only
tensors are read, so that loading one from elsewhere is as safe as ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vit_exp import compat

DCP_INDEX = ".metadata"  # torch.distributed.checkpoint's index of a checkpoint directory (which tensor is where)


def is_distributed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a torch.distributed.checkpoint directory (e.g. FSDP's sharded ``last.ckpt/``)."""
    return Path(path).is_dir() and (Path(path) / DCP_INDEX).is_file()


_INDEX_MODULE = "torch.distributed.checkpoint.metadata"
_INDEX_GLOBALS = frozenset({
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
})


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles only what a DCP index is made of: its metadata classes, sizes, dtypes, layouts and paths."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in _INDEX_GLOBALS or dtype:
            return super().find_class(module, name)
        if module == _INDEX_MODULE and "." not in name:  # its classes only, not what it imports
            found = super().find_class(module, name)
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise pickle.UnpicklingError(f"{module}.{name}")


def _read_index(path: Path) -> Any:
    """The ``.metadata`` of a DCP directory, unpickled only if it holds nothing but an index.

    DCP itself unpickles it as it is (any object, any code); reading it here first, with an allow-list, is
    what makes loading a sharded checkpoint from elsewhere as safe as ``torch.load(weights_only=True)``.

    Raises:
        ValueError: it refers to anything else, or is no pickle at all.
    """
    try:
        with open(path / DCP_INDEX, "rb") as f:
            return _IndexUnpickler(f).load()
    except pickle.UnpicklingError as e:
        reason = f"it refers to {e}, which an index does not hold"
    except Exception as e:  # noqa: BLE001  (truncated or not a pickle: many kinds of error, all the same here)
        reason = f"{type(e).__name__}: {e}"
    raise ValueError(
        f"{path / DCP_INDEX} is not a torch.distributed.checkpoint index ({reason}), so the checkpoint is not read; "
        "if it is damaged, use another checkpoint of the run (e.g. best.ckpt)"
    )


def load_distributed_checkpoint(path: str | Path, key: str = "model") -> dict[str, torch.Tensor]:
    """The tensors stored under ``key`` in a torch.distributed.checkpoint directory, whole, on the CPU.

    This is what FSDP's sharded checkpoints are (Lightning's ``state_dict_type="sharded"``: one ``__R_0.distcp``
    file per rank and the ``.metadata`` index; the module's state under ``model``). The shards are assembled in
    this process, without a process group, as torch's ``dcp_to_torch_save`` does. Only tensors are read (with
    ``weights_only=True``): DCP would unpickle other entries unsafely, and a model's weights are all tensors.

    Raises:
        ValueError: ``path`` is no such directory, its index holds something else, or nothing is under ``key``.
    """
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    if not is_distributed_checkpoint(path):
        raise ValueError(
            f"{path} is a directory, but not a sharded checkpoint: it has no {DCP_INDEX} (the index that "
            "torch.distributed.checkpoint writes last, so an unfinished save has none); pass a checkpoint file, or "
            "the directory that an FSDP run (hw=fsdp) saved, such as checkpoints/last.ckpt"
        )
    index = _read_index(path)
    if not isinstance(index, Metadata):
        raise ValueError(f"{path / DCP_INDEX} holds a {type(index).__name__}, not a torch.distributed.checkpoint index")
    state = compat.load_dcp_tensors(path, keys={key})
    if not state.get(key):
        stored = sorted({fqn.split(".")[0] for fqn in index.state_dict_metadata})
        raise ValueError(f"{path} holds no tensors under {key!r} (its entries: {', '.join(stored) or 'none'})")
    return state[key]
