"""Shared fixtures: compose the real configs in conf/ with overrides that shrink a run to seconds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

# Nothing in the tests may reach the network: no hub downloads, no W&B servers.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("HYDRA_FULL_ERROR", None)  # the tests read one-line errors; a developer's =1 makes them tracebacks

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# The smallest real run: the 28k-parameter vit_test on digits, a few batches, no progress bar.
TINY = [
    "model=vit_test",
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=3",
    "++trainer.limit_val_batches=1",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "sched.warmup_steps=1",
    "trainer.log_every_n_steps=1",
]


def compose(
    config_name: str = "train",
    overrides: list[str] = (),
    output_dir: Path | None = None,
    return_hydra_config: bool = False,
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as ``python train.py`` would, outside a Hydra run.

    ``paths.output_dir`` (``${hydra:runtime.output_dir}`` under Hydra) is set to ``output_dir`` when given;
    ``return_hydra_config`` keeps the ``hydra`` node (launcher, sweep settings).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=list(overrides) + extra, return_hydra_config=return_hydra_config
        )


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """tiny_cfg(*overrides, config_name="train", run_dir=tmp_path/"run") -> a composed config of a seconds-long run."""

    def make(*overrides: str, config_name: str = "train", run_dir: Path | None = None) -> DictConfig:
        return compose(config_name, TINY + list(overrides), run_dir or tmp_path / "run")

    return make
