"""A non-editable install works from any directory: the configs and the Hydra launcher plugin ship in the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway venv with ``pip install .`` of this checkout (built from a copy: nothing written into the repo).

    It sees this venv's packages through a .pth line (no torch download); that line adds their directory without
    running its .pth files, so the editable install of vit_exp there stays invisible.
    """
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    bindir = work / "venv" / "bin"
    purelib = subprocess.run(
        [str(bindir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(purelib, "dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = work / "checkout"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
        check=True, capture_output=True, text=True,
    )
    return bindir


def _cli(bindir: Path, name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(cwd)}
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [str(bindir / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_wheel_ships_the_configs_and_the_launcher_plugin(installed: Path) -> None:
    code = (
        "import vit_exp, vit_exp.cli as c, hydra_plugins.vit_exp_launcher.submitit_ranks as p, pathlib;"
        "print(vit_exp.__file__); print(len(list(pathlib.Path(c.CONF_DIR).rglob('*.yaml'))))"
    )
    out = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, check=True)
    where, count = out.stdout.split()
    assert where.startswith(str(installed.parent)), where  # the installed copy, not the checkout
    assert int(count) == len(list((ROOT / "src" / "vit_exp" / "conf").rglob("*.yaml")))


def test_vit_train_help_and_a_fast_dev_run_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    help_ = _cli(installed, "vit-train", "--help", cwd=tmp_path)
    assert help_.returncode == 0 and "Traceback" not in help_.stderr, help_.stderr
    assert "model: " in help_.stdout and "vit_base" in help_.stdout
    run = _cli(installed, "vit-train", "debug=fast_dev_run", "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test top-1" in run.stdout and (tmp_path / "run" / ".hydra" / "config.yaml").exists()


@pytest.mark.slow
def test_vit_eval_and_vit_predict_read_the_installed_runs_checkpoint(installed: Path, tmp_path: Path) -> None:
    from PIL import Image

    run = _cli(installed, "vit-train", "model=vit_test", "debug=limit", "hydra.run.dir=run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = "ckpt_path=run/checkpoints/best.ckpt"
    ev = _cli(installed, "vit-eval", ckpt, "hydra.run.dir=eval", cwd=tmp_path)
    assert ev.returncode == 0 and "Top 1 Accuracy" in ev.stdout, ev.stderr[-3000:]
    Image.new("L", (8, 8), 128).save(tmp_path / "digit.png")
    pr = _cli(installed, "vit-predict", ckpt, "images=digit.png", "topk=3", cwd=tmp_path)
    assert pr.returncode == 0 and "digit.png" in pr.stdout, pr.stderr[-3000:]
