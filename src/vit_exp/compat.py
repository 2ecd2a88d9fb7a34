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


class WeightAveragingState:
    """Named access to the state of Lightning's ``WeightAveraging`` callback, for our subclass of it
    (``vit_exp.callbacks.EMA``): ``average``, the ``AveragedModel`` made at fit's setup (``_average_model``, None
    until then), and ``latest_update_step``, the global step of its latest update (``_latest_update_step``, saved in
    the callback's state). Mixed in before ``WeightAveraging``."""

    @property
    def average(self) -> Any:
        return self._average_model  # type: ignore[attr-defined]

    @average.setter
    def average(self, model: Any) -> None:
        check_versions()
        self._average_model = model

    @property
    def latest_update_step(self) -> int:
        return self._latest_update_step  # type: ignore[attr-defined]

    @latest_update_step.setter
    def latest_update_step(self, step: int) -> None:
        self._latest_update_step = step


def is_logging_step(trainer: Any) -> bool:
    """Whether Lightning writes the training step now running to the loggers (and updates the progress bar): its own
    rule, ``trainer._logger_connector.should_update_logs`` (every ``log_every_n_steps`` batches, or when stopping).
    The same answer from ``training_step`` to ``on_train_batch_end``."""
    return trainer._logger_connector.should_update_logs


def forget_step_value(trainer: Any, name: str) -> None:
    """Drop the value last logged under ``name`` in this training epoch from Lightning's results
    (``trainer._results[...].reset()``), until it is logged again. Otherwise Lightning turns a ``prog_bar`` value
    into a Python number (a host read) at every later batch, logged there or not."""
    results = trainer._results
    for key, result in (results or {}).items():
        if key.endswith(f".{name}"):  # keyed "<hook>.<name>"
            result.reset()


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


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` can skip its update on a device flag (``set_skip_flag``): torch's fused Adam,
    AdamW and SGD (``_step_supports_amp_scaling``, as ``torch.amp.GradScaler`` checks)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def set_skip_flag(optimizer: Any, flag: Any) -> None:
    """Make the next ``optimizer.step`` a no-op where the float tensor ``flag`` is 1, decided on the device: the
    fused kernels leave weights and moments as they are and take back the step count (``optimizer.found_inf``,
    what ``torch.amp.GradScaler.step`` sets); None removes it."""
    if flag is None:
        optimizer.__dict__.pop("found_inf", None)
    else:
        optimizer.found_inf = flag


@contextlib.contextmanager
def compiled_graphs_per_function(at_least: int) -> Iterator[None]:
    """Within the block, ``torch.compile`` keeps at least ``at_least`` graphs of one function before it falls back
    to eager (``torch._dynamo.config.recompile_limit``, 8 by default): FlexiViT compiles one graph per patch size."""
    import torch._dynamo

    saved = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(saved, at_least)
    try:
        yield
    finally:
        torch._dynamo.config.recompile_limit = saved


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


# --- torch_xla (checked on torch_xla 2.9.0 with lightning 2.6.6) --------------------------------------------------


def xla_available() -> bool:
    """Whether torch_xla can be imported here (it needs its own torch: ``scripts/xla_env.sh``)."""
    import importlib.util

    return importlib.util.find_spec("torch_xla") is not None


@contextlib.contextmanager
def xla_cpu_devices(count: int = 1) -> Iterator[None]:
    """Test only: within the block, Lightning's ``XLAAccelerator`` counts ``count`` XLA devices, so that
    ``trainer=tpu`` runs on torch_xla's CPU backend (``PJRT_DEVICE=CPU``).

    Lightning counts TPU chips on the PCI bus (``torch_xla._internal.tpu.num_available_devices``), which finds none
    on a CPU. The two cached static methods that every part of Lightning asks (``auto_device_count``,
    ``is_available``) are replaced on the Fabric class the Trainer's ``XLAAccelerator`` inherits from, and put back
    afterwards. The XLA runtime is not touched: ``count`` > 1 only serves to build a Trainer, not to launch one.
    """
    check_versions()
    from lightning.fabric.accelerators.xla import XLAAccelerator

    saved = {name: XLAAccelerator.__dict__[name] for name in ("auto_device_count", "is_available")}
    XLAAccelerator.auto_device_count = staticmethod(lambda: count)
    XLAAccelerator.is_available = staticmethod(lambda: count > 0)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(XLAAccelerator, name, original)
