"""Running ``train.py`` as users do, in a scratch directory, so that any file a run writes is seen."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.conftest import ROOT

# A run of a few seconds: the 28k-parameter vit_test, a few batches, no progress bar.
QUICK = ["model=vit_test", "debug=limit", "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false"]


def train_cli(
    args: Sequence[str], cwd: Path, timeout: float = 300, home: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in ``cwd`` (outputs land there), without W&B credentials (``HOME=home``)."""
    environ = {**os.environ, "HOME": str(home or cwd.parent / f"{cwd.name}-home"), **env}
    environ.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def cli(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess]:
    """cli(*args, expect=0) runs train.py in tmp_path and checks its exit status (None: any)."""
    home = tmp_path_factory.mktemp("home")  # caches go there, not among the outputs

    def call(*args: str, expect: int | None = 0, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        out = train_cli(args, tmp_path, timeout=timeout, home=home, **env)
        if expect is not None:
            assert out.returncode == expect, out.stdout[-2000:] + out.stderr[-4000:]
        return out

    return call
