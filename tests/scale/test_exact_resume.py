"""A run SIGKILLed mid-epoch and resumed with resume=auto ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from tests.conftest import ROOT
from tests.scale.conftest import read_csv, train_cli

STEPS_PER_EPOCH = 1258 // 64  # digits train split, drop_last
RUN = [
    "model=vit_test",
    "model.drop_path_rate=0.1",  # random per step: exact only if the RNG state is restored too
    "trainer.max_epochs=3",
    "seed=3",
    "resume=auto",
    "callbacks.step_checkpoint.every_n_train_steps=4",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


def _tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a nested checkpoint structure, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


def train_killed_then_resumed(
    run: list[str],
    tmp_path: Path,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    epochs: int = 3,
    resume_with: Sequence[str] = (),
    reference: bool = True,
) -> tuple[Path, Path]:
    """``train.py RUN`` uninterrupted in ``tmp_path/reference`` (unless ``reference=False``), and in ``tmp_path/cut``
    SIGKILLed mid-epoch once it has written a checkpoint (all its processes: DDP ranks too), then resumed by the
    same command plus ``resume_with``; returns (cut, reference)."""
    if reference:
        out = train_cli([*run, "hydra.run.dir=reference"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]

    cut = tmp_path / "cut"
    last = cut / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *run, f"hydra.run.dir={cut}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the DDP ranks it starts die with it
    )
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler, no cleanup: as an OOM killer or a node failure
    proc.wait()
    killed_at = torch.load(last, weights_only=False)["global_step"]
    assert 0 < killed_at < epochs * steps_per_epoch and killed_at % steps_per_epoch, killed_at  # mid-epoch

    resumed = train_cli([*run, *resume_with, f"hydra.run.dir={cut}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    return cut, tmp_path / "reference"


def test_killed_mid_epoch_then_resumed_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    cut, reference = train_killed_then_resumed(RUN, tmp_path)
    assert_runs_match(cut, reference, 3 * STEPS_PER_EPOCH)


def assert_runs_match(cut: Path, reference: Path, steps: int) -> None:
    """The two runs end with the same weights and optimizer state (bit for bit), results and val curve."""
    ours = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)
    theirs = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours["global_step"] == theirs["global_step"] == steps
    a, b = (
        _tensors({k: ours[k] for k in ("state_dict", "optimizer_states")}),
        _tensors({k: theirs[k] for k in ("state_dict", "optimizer_states")}),
    )
    assert a.keys() == b.keys() and len(a) > 20
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit for bit: {different[:5]}"

    results = [json.loads((d / "results.json").read_text()) for d in (cut, reference)]
    for key in ("top1", "top5", "best_val_top1", "steps"):
        assert results[0][key] == results[1][key], key
    val = [
        {r["epoch"]: r["val/top1"] for r in read_csv(d / "metrics.csv") if r.get("val/top1")}
        for d in (cut, reference)
    ]
    assert val[0] and all(val[1][epoch] == value for epoch, value in val[0].items())
