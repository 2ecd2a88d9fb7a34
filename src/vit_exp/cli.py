"""Command-line entry points: ``python train.py`` (or ``vit-train``), ``python eval.py`` (or ``vit-eval``) and
``python predict.py`` (or ``vit-predict``).

Only Hydra is imported at start-up, so that ``--help`` and ``--cfg job`` answer at once; torch and Lightning
come in when a run starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # the configs ship inside the package


def _run(task: str, cfg: DictConfig, module: str = "run") -> Any:
    """``vit_exp.<module>.<task>(cfg)``; a config or hardware error or a diverged loss ends the process with its
    message, no traceback (in a sweep: the job fails and the sweep goes on)."""
    import importlib

    from vit_exp.errors import USER_ERRORS

    try:
        return getattr(importlib.import_module(f"vit_exp.{module}"), task)(cfg)
    except USER_ERRORS as e:
        if _in_sweep():
            raise  # Hydra records the job as failed and the sweep goes on (sys.exit would end the sweep)
        sys.exit(f"error: {e}")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> float | None:
    """Train; return the best val top-1 (%), the value a Hydra sweeper optimises."""
    return _run("train", cfg).best_val_top1


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
def evaluate(cfg: DictConfig) -> float | None:
    """Evaluate a checkpoint or published weights; return the top-1 (%)."""
    return _run("evaluate", cfg).top1


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def predict(cfg: DictConfig) -> None:
    """Print the top-k classes of images with a checkpoint of ours or published weights."""
    _run("main", cfg, module="predict")
