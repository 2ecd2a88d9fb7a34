"""Command-line entry points: ``python train.py`` (or ``vit-train``), ``python eval.py`` (or ``vit-eval``) and
``python predict.py`` (or ``vit-predict``).

Before Hydra runs, the overrides are checked against the config (``vit_exp.overrides``: a misspelt group or key
gets the closest real one). Only Hydra and OmegaConf are imported at start-up, so that ``--help`` answers at
once; ``--cfg job`` adds torch (the model's name comes from its ``ModelSpec``), and Lightning comes in when a run
starts. A run that stops with a user error
before it wrote anything of its own leaves no run directory behind; a command that finished ends its process
without the interpreter's teardown (``end_process``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # the configs ship inside the package


def model_name(model: DictConfig) -> str:
    """The name of the model a config builds (``vit_base_patch32_384``), for ``--cfg``'s first line, as the run
    resolves it (``vit_exp.checks.resolve_model``; an overridden architecture gets a name that says so)."""
    from vit_exp.checks import resolve_model
    from vit_exp.errors import ConfigError

    try:
        return resolve_model(model).arch
    except ConfigError as e:
        return f"none ({e})"  # the run stops with the same message



def _run(task: str, cfg: DictConfig, module: str = "run") -> Any:
    """``vit_exp.<module>.<task>(cfg)``; a config or hardware error or a diverged loss ends the process with its
    message, no traceback (in a sweep: the job fails and the sweep goes on; with ``HYDRA_FULL_ERROR=1``, the whole
    traceback)."""
    import importlib

    from vit_exp.errors import USER_ERRORS
    from vit_exp.hw import set_wait_policy

    try:
        set_wait_policy(cfg.get("hw"))  # before torch loads OpenMP: it reads OMP_WAIT_POLICY once
        return getattr(importlib.import_module(f"vit_exp.{module}"), task)(cfg)
    except USER_ERRORS as e:
        if _in_sweep():
            raise  # Hydra records the job as failed and the sweep goes on (sys.exit would end the sweep)
        _remove_unused_run_dir()
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's switch for whole tracebacks: ours come whole too,
            e.__suppress_context__ = False  # with the exception a message was made from (`raise ... from None`)
            raise
        sys.exit(f"error: {e}")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _remove_unused_run_dir() -> None:
    """Remove the run directory Hydra made for this run when it holds nothing but ``.hydra/`` and the log: the run
    stopped before it trained, wrote a checkpoint or a metric (a directory given with files in it stays)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    entries = list(run_dir.iterdir()) if run_dir.is_dir() else []
    made_by_hydra = any(p.name == ".hydra" and p.is_dir() for p in entries)
    if made_by_hydra and run_dir != Path.cwd() and all(p.name == ".hydra" or p.suffix == ".log" for p in entries):
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.parent.name == "outputs":  # the default outputs/DATE/TIME: DATE goes too if now empty
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()


def _main(task_main: Callable[[], Any], config_name: str) -> Callable[[], None]:
    """The console entry point: check the command line's overrides, hand over to ``hydra.main``; then, called by
    a program's top level (``train.py``, ``vit-train``, ``python -c``), end the process (``end_process``; not
    when other code called it, nor at a Python prompt or in a notebook, where the session goes on)."""

    def main() -> None:
        from vit_exp.errors import ConfigError
        from vit_exp.hw import pause_gc, start_load_sample
        from vit_exp.overrides import check_overrides

        pause_gc()  # until the first step (vit_exp.hw.resume_gc): start-up's objects would be walked again and again
        start_load_sample()  # hw.omp_wait_policy=auto looks at the CPUs while the command line is parsed
        try:
            shown = check_overrides(sys.argv[1:], CONF_DIR, config_name)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        if shown is not None and "model" in shown:  # --cfg: open with the model's name, as a YAML comment
            print(f"# model: {model_name(shown.model)}  (what the config below builds)")
        task_main()
        if _called_by_the_program(sys._getframe(1)) and not _interactive():
            end_process(0)

    main.__doc__ = task_main.__doc__
    return main


def _called_by_the_program(caller: Any) -> bool:
    """The caller's frame is the main script's top level (``train.py``, a console script, ``python -c``), not a
    function (a test, a user's code that goes on after the command)."""
    return caller.f_code.co_name == "<module>" and caller.f_globals.get("__name__") == "__main__"


def _interactive() -> bool:
    """A Python prompt or a Jupyter kernel, whose session goes on after a command returns."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or "ipykernel" in sys.modules


def end_process(code: int) -> NoReturn:
    """End the process as the interpreter would, without its teardown.

    What an exit does that matters is done here, in the interpreter's order: ``threading``'s shutdown (its exit
    hooks, which end idle ``concurrent.futures`` workers such as a checkpoint writer's, then a join of the threads
    that are not daemons), the ``atexit`` handlers (logging's flush and close, multiprocessing's reaping of loader
    workers, W&B's), a flush of stdout and stderr. What is left out is freeing the several thousand modules and
    their objects that torch, Lightning and their dependencies loaded: 1-3 s of every run on a 2-core machine
    (README), while nothing is written any more.
    """
    import atexit
    import threading

    threading._shutdown()  # (private, in every Python since 3.4: what the interpreter itself calls first)
    atexit._run_exitfuncs()  # (private, stable since Python 2: what the interpreter itself calls next)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to flush
            stream.flush()
    os._exit(code)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
    """Train; return the best val top-1 (%), the value a Hydra sweeper optimises."""
    return _run("train", cfg).best_val_top1


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def _evaluate(cfg: DictConfig) -> float | None:
    """Evaluate a checkpoint or published weights; return the top-1 (%)."""
    return _run("evaluate", cfg).top1


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def _predict(cfg: DictConfig) -> None:
    """Print the top-k classes of images with a checkpoint of ours or published weights."""
    _run("main", cfg, module="predict")


train = _main(_train, "train")
evaluate = _main(_evaluate, "eval")
predict = _main(_predict, "predict")
