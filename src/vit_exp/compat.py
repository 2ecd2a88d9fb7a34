"""Every private name of Lightning, torch and Hydra that vit_exp touches, each behind one small named function.

A dependency's private names change without notice between releases: they are used here and nowhere else, so that
a new Lightning or torch means reading this one module. Each function says what it stands for; all were checked on
the versions in ``TESTED`` (``check_versions`` warns once outside them). Patches are applied in context managers
that undo them. Heavy libraries are imported inside the functions: ``vit_exp.sweep`` (no torch) uses this module.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# (package, oldest tested, first untested): lightning 2.6.x, torch 2.9 to 2.14.
TESTED = (("lightning", (2, 6), (2, 7)), ("torch", (2, 9), (2, 15)))


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@functools.cache
def check_versions() -> list[str]:
    """Warn, once per process, when Lightning or torch is outside the versions the names below were checked on;
    returns the complaints (empty when all is as tested)."""
    from importlib.metadata import PackageNotFoundError, version

    complaints = []
    for package, low, high in TESTED:
        try:
            found = version(package)
        except PackageNotFoundError:
            continue
        if not low <= _version(found) < high:
            complaints.append(
                f"{package} {found} is outside the versions vit_exp.compat was checked on "
                f"({'.'.join(map(str, low))} <= {package} < {'.'.join(map(str, high))})"
            )
    for text in complaints:
        warnings.warn(f"{text}: if a run fails in vit_exp.compat, update it (or install a tested version)", stacklevel=2)
    return complaints


# --- Lightning ---------------------------------------------------------------------------------------------------


def collect_rng_states() -> dict[str, Any]:
    """The torch, CUDA, numpy and python random states (``lightning.fabric.utilities.seed._collect_rng_states``)."""
    check_versions()
    from lightning.fabric.utilities.seed import _collect_rng_states

    return _collect_rng_states()


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what ``collect_rng_states`` returned (``lightning.fabric.utilities.seed._set_rng_states``)."""
    check_versions()
    from lightning.fabric.utilities.seed import _set_rng_states

    _set_rng_states(states)


def sharded_meta_filename() -> str:
    """The file beside the shards in which Lightning saves the rest of an FSDP checkpoint
    (``lightning.fabric.utilities.load._METADATA_FILENAME``)."""
    check_versions()
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    return _METADATA_FILENAME


def fsdp_state_dict_type(strategy: Any) -> str:
    """"sharded" or "full": how an ``FSDPStrategy`` saves checkpoints (its ``_state_dict_type``)."""
    return strategy._state_dict_type


def hand_over_loader_states(trainer: Any) -> bool:
    """Give the train loaders the state saved in the checkpoint being resumed, if the fit loop still holds it
    (``fit_loop._combined_loader_states_to_load``, ``fit_loop._load_combined_loader_states``); True if it did."""
    check_versions()
    fit_loop = trainer.fit_loop
    if not getattr(fit_loop, "_combined_loader_states_to_load", None):
        return False
    fit_loop._load_combined_loader_states()
    return True


def process_rank() -> int | None:
    """This process's global rank from the launcher's environment, before any process group exists
    (``lightning.fabric.utilities.rank_zero._get_rank``); None when nothing says."""
    check_versions()
    from lightning.fabric.utilities.rank_zero import _get_rank

    return _get_rank()


def started_experiment(logger: Any) -> Any:
    """The experiment object a Lightning logger has started, or None: reading ``logger.experiment`` would start
    one (``logger._experiment``)."""
    return getattr(logger, "_experiment", None)


LAUNCHER_MODULE = "lightning.pytorch.strategies.launchers.subprocess_script"


@contextlib.contextmanager
def launcher_hooks(
    subprocess_cmd: Callable[[int], tuple[Sequence[str], str]], process_observer: Callable[[list], None]
) -> Iterator[None]:
    """Within the block, Lightning's DDP/FSDP launcher starts its children under Hydra with ``subprocess_cmd`` (in
    place of ``_hydra_subprocess_cmd``) and watches them with ``process_observer`` (``_launch_process_observer``);
    both are put back afterwards, whatever happens.

    Raises:
        RuntimeError: this Lightning has no such functions any more.
    """
    check_versions()
    import importlib

    module = importlib.import_module(LAUNCHER_MODULE)
    hooks = {"_hydra_subprocess_cmd": subprocess_cmd, "_launch_process_observer": process_observer}
    for name in hooks:
        if not hasattr(module, name):
            raise RuntimeError(
                f"{LAUNCHER_MODULE}.{name} is gone in this Lightning version; vit_exp.compat.launcher_hooks must "
                "be updated to start and watch DDP ranks under Hydra"
            )
    saved = {name: getattr(module, name) for name in hooks}
    for name, hook in hooks.items():
        setattr(module, name, hook)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(module, name, original)


# --- torch -------------------------------------------------------------------------------------------------------


def foreach_norm(tensors: list[Any]) -> list[Any]:
    """The 2-norm of each tensor, in one fused kernel per device and dtype (``torch._foreach_norm``)."""
    import torch

    return torch._foreach_norm(tensors)


def abort_process_group() -> None:
    """Abort this process's default process group, so that a collective waiting for a dead rank returns with an
    error (``torch.distributed.distributed_c10d._abort_process_group``)."""
    from torch.distributed.distributed_c10d import _abort_process_group

    _abort_process_group()


def load_dcp_tensors(path: str | Path, keys: set[str]) -> dict[str, Any]:
    """The tensors under ``keys`` of a torch.distributed.checkpoint directory, whole, on the CPU, in this process and
    without a process group (as torch's ``dcp_to_torch_save`` does: ``_EmptyStateDictLoadPlanner`` and
    ``state_dict_loader._load_state_dict``). Entries that are no tensors are not read: DCP would unpickle them."""
    check_versions()
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class TensorsOnly(_EmptyStateDictLoadPlanner):
        def _should_include_key(self, fqn: str, metadata: Metadata) -> bool:
            tensor = isinstance(metadata.state_dict_metadata[fqn], TensorStorageMetadata)
            return tensor and super()._should_include_key(fqn, metadata)

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(path), planner=TensorsOnly(keys=keys), no_dist=True)
    return state


# --- Hydra -------------------------------------------------------------------------------------------------------


def job_return_value(job_return: Any) -> Any:
    """What a Hydra job returned, or the exception it raised, without raising it (``JobReturn._return_value``;
    the public ``return_value`` re-raises a failed job's exception)."""
    return job_return._return_value
