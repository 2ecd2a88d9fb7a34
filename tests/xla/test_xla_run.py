"""``train.py trainer=tpu`` on the XLA CPU device: it trains, compiles a fixed set of graphs, reads the device only at
logging steps, writes checkpoints that load without torch_xla, resumes exactly after SIGTERM, and stops on a NaN."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.xla.conftest import HELPERS, ROOT, STEPS, XLA, records, xla_train

pytestmark = XLA


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if r["stage"] == "train"]


def _logged_steps(run_dir: Path) -> set[int]:
    """The steps at which Lightning logged train/loss, as ``global_step`` after that step (CSV's step + 1)."""
    with (run_dir / "metrics.csv").open() as f:
        return {int(row["step"]) + 1 for row in csv.DictReader(f) if row.get("train/loss")}


def test_hw_tpu_trains_on_the_xla_device(xla_run: Path) -> None:
    results = json.loads((xla_run / "results.json").read_text())
    assert results["steps"] == STEPS and results["images"] > 0
    assert (xla_run / "checkpoints" / "best.ckpt").exists() and (xla_run / "checkpoints" / "last.ckpt").exists()
    assert records(xla_run)[-1]["ExecuteTime"] > 0  # graphs ran on the XLA device, not eagerly on the CPU


def test_the_training_step_compiles_once_whether_it_logs_or_not(xla_run: Path) -> None:
    """The graph of a training step compiles at step 1 (it creates the optimizer's state) and at step 2, then never:
    not at the steps that log, nor after an epoch boundary (validation, checkpoints)."""
    recs, logged = records(xla_run), _logged_steps(xla_run)
    # Compilations across each step's optimizer step: from the step traced ("step") to the next record. A logging
    # step's reads (the loss, the NaN guard's flag) run there too: their small graphs compile at the first one.
    across = {b["step"] + 1: a["CompileTime"] - b["CompileTime"] for b, a in zip(recs, recs[1:]) if b["stage"] == "step"}
    print("compilations across the optimizer step, by step:", across)
    assert sorted(across) == list(range(1, STEPS + 1))
    assert across[1] > 0 and across[2] > 0
    recompiled = {step: n for step, n in across.items() if step > 2 and n and step != min(logged)}
    assert not recompiled, f"training steps that compiled a new graph: {recompiled}"


def test_nothing_compiles_in_the_third_epoch_s_training(xla_run: Path) -> None:
    recs = records(xla_run)
    second_val = [i for i, r in enumerate(recs) if r["stage"] == "val"][2]  # sanity check, epoch 1, epoch 2
    third = [r["CompileTime"] for r in recs[second_val + 1 :] if r["stage"] in ("step", "train")]
    print("compilations through the third epoch's training:", third)
    assert len(third) == 1 + 2 * 5 and len(set(third)) == 1, third  # the epoch's start, then 5 steps


def test_no_device_to_host_transfer_in_a_step_that_does_not_log(xla_run: Path) -> None:
    train, logged = _train_records(xla_run), _logged_steps(xla_run)
    assert logged == {3, 6, 9, 12, 15}
    reads = {}
    for before, after in zip(train, train[1:]):
        if after["step"] == before["step"] + 1 and after["step"] not in logged:  # an epoch boundary in between: not
            reads[after["step"]] = sum(after[k] - before[k] for k in ("TransferFromDeviceTime", "xla::_local_scalar_dense"))
    assert reads and not any(reads.values()), f"device-to-host transfers at steps that do not log: {reads}"


def test_loss_and_metrics_accumulate_in_float32(xla_run: Path) -> None:
    """bf16-true: a bf16 sum would give e.g. 0.1279296875 for 23/180; float32 gives the count's exact fraction."""
    images = json.loads((xla_run / "results.json").read_text())["images"]
    with (xla_run / "metrics.csv").open() as f:
        top1 = next(float(row["test/top1"]) for row in csv.DictReader(f) if row.get("test/top1"))
    assert abs(top1 * images - round(top1 * images)) < 1e-3, (top1, images)


def test_the_checkpoint_loads_without_torch_xla(xla_run: Path, tmp_path: Path) -> None:
    code = (
        "import sys, runpy; sys.modules['torch_xla'] = None  # any import of torch_xla now fails\n"
        "import torch\n"
        f"ckpt = torch.load({str(xla_run / 'checkpoints' / 'best.ckpt')!r}, map_location='meta', weights_only=True)\n"
        "assert ckpt['state_dict'], 'no weights'\n"
        f"sys.argv = ['eval.py', 'ckpt_path={xla_run}/checkpoints/best.ckpt', 'hydra.run.dir={tmp_path}/eval']\n"
        "runpy.run_path('eval.py', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["images"] > 0


def test_resume_auto_after_sigterm_continues_exactly(xla_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "preempted"
    signal = [f"+callbacks.signal._target_={HELPERS}.SignalAtStep", "+callbacks.signal.step=7"]
    first = xla_train(run_dir, *signal)
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 7 <= stopped["global_step"] < 10  # preempted in the second epoch, at the next step that reads the device
    second = xla_train(run_dir, "resume=auto")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    straight = torch.load(xla_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == STEPS
    for name, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name


def test_the_nan_guard_stops_the_run(tmp_path: Path) -> None:
    # Poisoned at two steps in a row: one of them is a step at which the guard reads the loss.
    poison = [f"+callbacks.poison._target_={HELPERS}.NaNBatch", "+callbacks.poison.steps=[2,3]"]
    out = xla_train(tmp_path / "nan", *poison)
    assert out.returncode == 1
    assert "error: the training loss is nan at step" in out.stderr, out.stderr[-3000:]
