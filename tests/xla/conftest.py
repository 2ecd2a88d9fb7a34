"""The XLA tests: ``train.py trainer=tpu`` on torch_xla's CPU backend (``PJRT_DEVICE=CPU``), in a subprocess.

They need an environment with torch_xla (``bash scripts/xla_env.sh VENV``, then ``VENV/bin/python -m pytest -m xla
tests/xla``) and skip without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vit_exp.compat import xla_available

ROOT = Path(__file__).resolve().parents[2]
XLA = [pytest.mark.xla, pytest.mark.skipif(not xla_available(), reason="needs torch_xla (scripts/xla_env.sh)")]
# The command: one XLA CPU device, the 28k-parameter vit_test, three epochs of 5 steps (the third shows what
# compiles once every kind of step has run twice); Lightning logs (and vit_exp's checks read the device) every 3rd step.
RUN = ["trainer=tpu", "trainer.devices=1", "model=vit_test", "debug=limit", "trainer.max_epochs=3",
       "trainer.log_every_n_steps=3"]  # fmt: skip
STEPS = 15
HELPERS = "tests.scale.helpers"


def xla_train(run_dir: Path, *overrides: str, metrics: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """``tests/xla/cpu_train.py RUN... overrides`` in a subprocess on the XLA CPU device, run directory ``run_dir``;
    with ``metrics``, torch_xla's counters per step go to ``run_dir/xla.jsonl`` (``XLAMetricsLog``)."""
    extra = [f"+callbacks.xla_metrics={{_target_:vit_exp.callbacks.xla.XLAMetricsLog,path:{run_dir}/xla.jsonl}}"]
    cmd = [sys.executable, str(ROOT / "tests" / "xla" / "cpu_train.py"), *RUN, f"hydra.run.dir={run_dir}",
           *overrides, *(extra if metrics else [])]  # fmt: skip
    env = {**os.environ, "PJRT_DEVICE": "CPU", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "HYDRA_FULL_ERROR": "0"}
    env.pop("XLA_USE_BF16", None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def records(run_dir: Path) -> list[dict]:
    """The lines of ``xla.jsonl``."""
    return [json.loads(line) for line in (run_dir / "xla.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def xla_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of ``RUN`` with torch_xla's counters; its run directory."""
    run_dir = tmp_path_factory.mktemp("xla") / "run"
    out = xla_train(run_dir, metrics=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir
