"""Process-wide settings of a hardware profile (the ``hw`` node of ``conf/hw/*.yaml``): CPU threads, the OpenMP
wait policy, and the precision of float32 matmuls on CUDA.

OpenMP reads its wait policy once, when the runtime loads with torch, so ``set_wait_policy`` runs before the
first ``import torch`` (``vit_exp.cli``); a value the user exported is kept. Neither policy is right everywhere:
by default (libgomp, in PyPI's torch) idle threads spin for a while (300,000 rounds) before they sleep. With
other processes on the same cores (a laptop with a browser open, a shared CI runner) the spinning threads take
turns with the ones doing work; ``PASSIVE`` makes them sleep at once, but where waking a thread is slow (some
virtual machines) it costs a little at every parallel region, and a small model's step has hundreds. 3-epoch
default runs on two cores (README), img/s: idle, PASSIVE 915-1,047, spinning 1,560-1,678; beside a busy
process, PASSIVE 896-1,124, spinning 443-504. So ``hw.omp_wait_policy: auto`` (``hw=cpu``) looks before it
chooses: it samples how busy the CPUs it may use are while the command line is parsed (``/proc/stat``, less this
process's own time) and chooses ``PASSIVE`` when other processes leave fewer idle CPUs than its threads need,
OpenMP's default otherwise. It is a look at one moment: ``passive`` or ``active`` fix the policy for a run.

``hw.threads: auto`` keeps torch's own choice (one thread per physical core), capped to the CPUs this process
may run on (its affinity mask) and to its cgroup CPU quota (a container given 2 CPUs of a 64-core host). A
number sets it; ``OMP_NUM_THREADS`` in the environment still sets torch's choice, which ``auto`` keeps.

Python's garbage collector is paused while a command starts (``pause_gc``) and resumes before the first step
(``resume_gc``), with what start-up built frozen out of its sight (``gc.freeze``). Start-up allocates some
500,000 objects that live as long as the process (torch's, Lightning's, the model's); while they pile up, each
full collection walks all of them again, eight passes that took 1.1-1.4 s of the default run's start (README),
and any later one would stop training for 0.4 s to walk them once more. Cycles left by start-up (a few thousand
objects) are then never collected.

On CUDA, float32 matmuls run on TF32 tensor cores (``torch.set_float32_matmul_precision("high")``, what
Lightning advises; ``hw.matmul_precision=highest`` turns it off). bf16-mixed runs compute most matmuls in bf16
anyway; TF32 covers what autocast leaves in float32 (and 32-true runs).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class CpuTimes(NamedTuple):
    """A reading of the clock and of CPU time (seconds) for ``other_cpus``."""

    wall: float
    busy: float  # CPU time spent by anything on the CPUs this process may use
    own: float  # this process's own (all its threads)


_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before the first set_num_threads
_LOAD_START: list[CpuTimes] = []  # where hw.omp_wait_policy=auto's look at the CPUs begins (start_load_sample)
LOAD_WINDOW_S = 0.1  # the shortest look: /proc/stat counts in 10 ms ticks


def check(hw: Mapping[str, Any] | None) -> None:
    """Raise ``ConfigError`` for a value of ``hw.threads``, ``hw.omp_wait_policy`` or ``hw.matmul_precision`` that
    cannot be applied: their rules in ``vit_exp.rules``, checked on the ``hw`` node alone (before torch loads)."""
    from omegaconf import OmegaConf

    from vit_exp.rules import check_values

    check_values(OmegaConf.create({"hw": dict(hw or {})}))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a cluster job or container was given)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity masks
        return os.cpu_count() or 1


SHM = Path("/dev/shm")  # where DataLoader workers put the batches they hand over (torch's shm_open, on Linux)
LOADER_PREFETCH = 2  # batches each worker keeps ready: the DataLoader's prefetch_factor, which we do not change


def batches_in_shm(workers: int) -> int:
    """The batches a DataLoader holds in shared memory: ``LOADER_PREFETCH`` a worker and the one being read (in a
    16 MB /dev/shm, 2 workers ran with batches of 20 images at 224 px, 5 x 2.9 MB, and died with 24; 1 worker ran
    with 34 and died with 40); none without workers."""
    return workers * LOADER_PREFETCH + 1 if workers else 0


def shm_size(shm: Path = SHM) -> int | None:
    """The bytes that ``shm`` holds (a container's is 64 MB unless ``docker run --shm-size`` says more); None where
    there is none (macOS, Windows: torch shares memory otherwise) or it reports no size."""
    return (shutil.disk_usage(shm).total or None) if shm.is_dir() else None


def shm_workers(batch_bytes: int, processes: int = 1, shm: Path = SHM) -> int | None:
    """The most loader workers a process may have, when each of ``processes`` has as many, for their batches of
    ``batch_bytes`` to fit in ``shm`` (``batches_in_shm``); None where there is no ``shm``."""
    size = shm_size(shm)
    return None if size is None else max((size // (batch_bytes * processes) - 1) // LOADER_PREFETCH, 0)


def cpu_times(stat: Path = Path("/proc/stat")) -> CpuTimes | None:
    """Now, as ``CpuTimes``: the busy time of this process's CPUs (user, nice, system, irq, softirq; not idle,
    iowait or steal) from ``stat``; None where there is no such file (macOS, Windows)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name in mine:
            user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
            ticks += user + nice + system + irq + softirq
    own = os.times()
    return CpuTimes(time.monotonic(), ticks / os.sysconf("SC_CLK_TCK"), own.user + own.system)


def other_cpus(start: CpuTimes, end: CpuTimes) -> float:
    """How many CPUs other processes kept busy between two readings (this process's own time taken out)."""
    return max(0.0, (end.busy - start.busy) - (end.own - start.own)) / max(end.wall - start.wall, 1e-9)


_GC_PAUSED: list[bool] = []  # set by pause_gc: this process's start-up paused the collector


def pause_gc() -> None:
    """Pause the garbage collector while the command starts (``vit_exp.cli``); ``resume_gc`` ends the pause."""
    if gc.isenabled():
        gc.disable()
        _GC_PAUSED.append(True)


def resume_gc() -> None:
    """Before the first step: freeze what start-up allocated (moved to a generation no collection walks) and let
    the collector run again. A no-op where ``pause_gc`` paused nothing (a test, a user's own script), so that
    nothing of theirs is frozen."""
    if _GC_PAUSED:
        _GC_PAUSED.clear()
        gc.freeze()
        gc.enable()


def start_load_sample() -> None:
    """Begin ``hw.omp_wait_policy=auto``'s look at the CPUs (``vit_exp.cli`` calls it first thing, so that the
    look spans the parsing of the command line instead of adding a wait)."""
    if (now := cpu_times()) is not None:
        _LOAD_START[:] = [now]


def auto_wait_policy(others: float, cpus: int, threads: int) -> str | None:
    """``PASSIVE`` when other processes keep busy more than the CPUs that ``threads`` leave free (by half a CPU or
    more), else None (OpenMP's default: spin, then sleep)."""
    return "PASSIVE" if others >= cpus - threads + 0.5 else None


def _sample_load() -> float | None:
    """Other processes' busy CPUs since ``start_load_sample`` (sampling for ``LOAD_WINDOW_S`` if it was not
    called or too recently); None where the CPUs' times cannot be read."""
    start = _LOAD_START[0] if _LOAD_START else cpu_times()
    if start is None:
        return None
    if (wait := start.wall + LOAD_WINDOW_S - time.monotonic()) > 0:
        time.sleep(wait)
    return other_cpus(start, cpu_times())


def set_wait_policy(hw: Mapping[str, Any] | None) -> str | None:
    """Export ``OMP_WAIT_POLICY`` from ``hw.omp_wait_policy`` (``auto``: chosen from the machine's load, see the
    module's docstring) unless the environment has one; return the value in force (None: OpenMP's default).
    Warns when torch is already loaded (too late to change it), unless the choice was left to ``auto``.

    Raises:
        ConfigError: a value of the ``hw`` node that cannot be applied (``check``), before anything heavy loads.
    """
    check(hw)
    wanted = (hw or {}).get("omp_wait_policy")
    if not wanted or "OMP_WAIT_POLICY" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY")
    if "torch" in sys.modules:  # (a sweep's later jobs find the first job's export above)
        if wanted != "auto":
            warnings.warn(f"hw.omp_wait_policy={wanted} comes too late: torch (and OpenMP) is already loaded; "
                          f"export OMP_WAIT_POLICY={wanted.upper()} before starting Python", stacklevel=2)  # fmt: skip
        return None
    if wanted == "auto":
        if (others := _sample_load()) is None:
            return None
        threads = (hw or {}).get("threads")
        cpus = usable_cpus()
        policy = auto_wait_policy(others, cpus, cpus if threads in (None, "auto") else int(threads))
        log.info("hw.omp_wait_policy=auto: other processes kept %.1f of %d CPUs busy; OpenMP threads %s", others,
                 cpus, "sleep when idle (OMP_WAIT_POLICY=PASSIVE)" if policy else "spin before they sleep")  # fmt: skip
        if policy is None:
            return None
        wanted = policy
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
