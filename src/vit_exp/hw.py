"""Process-wide settings of a hardware profile (the ``hw`` node of ``conf/hw/*.yaml``): CPU threads, the OpenMP
wait policy, and the precision of float32 matmuls on CUDA.

By default OpenMP threads spin for a while after each parallel region, waiting for the next one. Alone on a
machine that saves a little latency; with other processes on the same cores (a laptop with a browser open, a
shared CI runner) the spinning threads take turns with the ones doing work, and a 3-epoch run of the default
job fell from ~400 to 29-115 img/s. ``PASSIVE`` makes them sleep instead. OpenMP reads the variable once, when
the runtime loads with torch, so ``set_wait_policy`` runs before the first ``import torch`` (``vit_exp.cli``);
a value the user exported is kept.

``hw.threads: auto`` keeps torch's own choice (one thread per physical core), capped to the CPUs this process
may run on (its affinity mask) and to its cgroup CPU quota (a container given 2 CPUs of a 64-core host). A
number sets it; ``OMP_NUM_THREADS`` in the environment still sets torch's choice, which ``auto`` keeps.

On CUDA, float32 matmuls run on TF32 tensor cores (``torch.set_float32_matmul_precision("high")``, what
Lightning advises; ``hw.matmul_precision=highest`` turns it off). bf16-mixed runs compute most matmuls in bf16
anyway; TF32 covers what autocast leaves in float32 (and 32-true runs).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before the first set_num_threads


def check(hw: Mapping[str, Any] | None) -> None:
    """Raise ``ConfigError`` for a value of ``hw.threads``, ``hw.omp_wait_policy`` or ``hw.matmul_precision`` that
    cannot be applied: their rules in ``vit_exp.rules``, checked on the ``hw`` node alone (before torch loads)."""
    from omegaconf import OmegaConf

    from vit_exp.rules import check_values

    check_values(OmegaConf.create({"hw": dict(hw or {})}))


def set_wait_policy(hw: Mapping[str, Any] | None) -> str | None:
    """Export ``OMP_WAIT_POLICY`` from ``hw.omp_wait_policy`` unless the environment has one; return the value in
    force (None: OpenMP's default). Warns when torch is already loaded (too late to change it).

    Raises:
        ConfigError: a value of the ``hw`` node that cannot be applied (``check``), before anything heavy loads.
    """
    check(hw)
    wanted = (hw or {}).get("omp_wait_policy")
    if not wanted or "OMP_WAIT_POLICY" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:  # (a sweep's later jobs find the first job's export above)
        warnings.warn(f"hw.omp_wait_policy={wanted} comes too late: torch (and OpenMP) is already loaded; export "
                      f"OMP_WAIT_POLICY={wanted.upper()} before starting Python", stacklevel=2)  # fmt: skip
        return None
    os.environ["OMP_WAIT_POLICY"] = wanted.upper()
    return os.environ["OMP_WAIT_POLICY"]


def cpu_quota() -> int | None:
    """The CPUs of this process's cgroup v2 quota (``cpu.max``), rounded up; None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))


def auto_threads(torch_default: int) -> int:
    """Torch's default thread count, capped to the usable CPUs (affinity mask) and the cgroup quota."""
    from vit_exp.data.datamodule import usable_cpus  # (with Lightning: loaded by the run already)

    return min(n for n in (torch_default, usable_cpus(), cpu_quota()) if n)


def apply_threads(hw: Mapping[str, Any] | None) -> int:
    """Set torch's intra-op threads from ``hw.threads`` (``auto``, a number, or absent: torch's choice); return them."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    threads = (hw or {}).get("threads")
    if threads is None:
        return torch.get_num_threads()
    n = auto_threads(_TORCH_DEFAULT[0]) if threads == "auto" else int(threads)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
        log.info("torch uses %d CPU threads (hw.threads=%s)", n, threads)
    return n


def apply_matmul_precision(hw: Mapping[str, Any] | None, accelerator: str) -> str | None:
    """``torch.set_float32_matmul_precision`` from ``hw.matmul_precision``; on CUDA ``high`` (TF32) when it is
    null. Returns the precision set (None: left as it was, e.g. on the CPU)."""
    import torch

    precision = (hw or {}).get("matmul_precision")
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision is None and cuda:
        precision = "high"
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    return precision
