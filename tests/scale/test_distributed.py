"""Hydra + Lightning DDP on 2 CPU processes (hw=ddp_sim): one run directory, written by rank 0 only; sweeps of
DDP jobs; FSDP's sharded checkpoint saved atomically, read by eval/predict/export, and resumed on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.conftest import ROOT
from tests.scale.conftest import QUICK, read_csv
from vit_exp import export, predict
from vit_exp.data.digits import DigitsSource

STARTED_2 = "Starting with 2 processes"  # Lightning's rank-0 line once both ranks have joined


def _files(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if "wandb" not in p.parts}


def test_ddp_ranks_share_rank_zeros_run_directory_and_write_nothing_of_their_own(cli, tmp_path: Path) -> None:
    single = cli(*QUICK, "hydra.run.dir=single")
    ddp = cli(*QUICK, "hw=ddp_sim", "hydra.run.dir=ddp")
    assert STARTED_2 in ddp.stdout + ddp.stderr and STARTED_2 not in single.stdout + single.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # no outputs/ of a child's own
    assert _files(tmp_path / "ddp") == _files(tmp_path / "single")  # no per-rank log, no .pl_hydra_rank_1
    rows = read_csv(tmp_path / "ddp" / "metrics.csv")
    assert any(r.get("test/top1") for r in rows)  # the test metric, gathered over both ranks' halves


def test_a_sweep_of_ddp_jobs_runs_every_job_to_completion(cli, tmp_path: Path) -> None:
    cli("-m", *QUICK, "hw=ddp_sim", "optim.lr=1e-3,3e-4", "hydra.sweep.dir=sweep")
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    jobs = read_csv(sweep / "summary.csv")
    assert [(j["job"], float(j["optim.lr"]), j["status"]) for j in jobs] == [
        ("0", 1e-3, "COMPLETED"),
        ("1", 3e-4, "COMPLETED"),
    ]
    for job in ("0", "1"):
        assert (sweep / job / "results.json").is_file() and not list((sweep / job).glob("*ddp_process*"))


def _eval_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python eval.py ARGS`` in ``cwd``, as a user runs it (as ``train_cli`` runs train.py: no W&B key, own HOME)."""
    environ = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"HOME": str(cwd.parent / "eval-home")}
    out = subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def test_fsdp_sharded_checkpoint_is_saved_evaluated_and_resumed_on_two_cpu_processes(cli, tmp_path: Path) -> None:
    """hw=fsdp as composed (one shard unit per Block, sharded checkpoints saved atomically), on 2 CPU processes
    over gloo; eval.py, predict and export read the sharded directory in one process; resume=auto continues it,
    also after a save that died between its two renames.

    Lightning itself refuses FSDP without CUDA; tests.scale.cpu_fsdp lifts that for this test only.
    """
    fsdp_on_cpu = [
        "hw=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.strategy._target_=tests.scale.cpu_fsdp.CPUFSDPStrategy",
        "+trainer.strategy.process_group_backend=gloo",
        "resume=auto",
        "hydra.run.dir=fsdp",
        # 2 test batches of 64 per rank: images 0-255, which eval.py below sees as 4 batches in one process
        "data.eval_batch_size=64",
        # a checkpoint every 2 steps under its own name, keeping 1: ModelCheckpoint removes the older directories
        "+callbacks.rolling._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        "+callbacks.rolling.dirpath=${paths.output_dir}/rolling",
        "+callbacks.rolling.filename='{step}'",
        "+callbacks.rolling.every_n_train_steps=2",
        "+callbacks.rolling.save_top_k=1",
    ]
    cli(*QUICK, *fsdp_on_cpu, "trainer.max_epochs=1")
    run_dir = tmp_path / "fsdp"
    checkpoints, last = run_dir / "checkpoints", run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and {p.name for p in last.iterdir()} >= {"__0_0.distcp", "__1_0.distcp", "meta.pt"}
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 5  # meta.pt loads safely
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # nothing left aside
    assert [p.name for p in (run_dir / "rolling").iterdir()] == ["step=4.ckpt"]  # step=2.ckpt/ was removed
    results = json.loads((run_dir / "results.json").read_text())
    assert results["top1"] is not None and results["params"] == 27_946  # vit_test whole, not one rank's shard

    # eval.py on the sharded last.ckpt (the same state as best.ckpt, which the run tested) in one CPU process.
    eval_args = ["data.eval_batch_size=64", "++trainer.limit_test_batches=4", "++trainer.enable_progress_bar=false"]
    _eval_cli(tmp_path, f"ckpt_path={last}", *eval_args, "hydra.run.dir=eval")
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (evaluated["top1"], evaluated["top5"]) == (results["top1"], results["top5"])
    # predict and export read it too, with the weights that torch's own dcp_to_torch_save assembles, bit for bit.
    whole = tmp_path / "whole.pt"
    dcp_to_torch_save(last, whole)
    expected = torch.load(whole, weights_only=True)["model"]
    predictor = predict.Predictor.from_checkpoint(last)
    weights = predictor.model.state_dict()
    assert len(weights) == len(expected) and all(torch.equal(v, expected[f"model.{k}"]) for k, v in weights.items())
    assert predictor.class_names == DigitsSource.class_names
    assert export.main(["--ckpt", str(last), "--format", "torch", "--out", str(tmp_path / "m.pt2")]) < 1e-4

    # A save killed between its two renames: last.ckpt is at .last.ckpt.old, beside an unfinished .partial.
    last.rename(checkpoints / ".last.ckpt.old")
    (checkpoints / ".last.ckpt.partial").mkdir()
    (checkpoints / ".last.ckpt.partial" / "__0_0.distcp").write_bytes(b"half a shard")
    resumed = cli(*QUICK, *fsdp_on_cpu, "trainer.max_epochs=2")
    logs = resumed.stdout + resumed.stderr
    assert "put back the previous one" in logs and "Restoring states from the checkpoint" in logs
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 10  # 5 restored + 5 new
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert [p.name for p in (run_dir / "rolling").iterdir()] == ["step=10.ckpt"]


def test_fsdp_on_the_cpu_without_the_test_shim_says_what_to_use(cli) -> None:
    out = cli(*QUICK, "hw=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", expect=1)
    assert "FSDP on CUDA GPUs only" in out.stderr and "hw=ddp_sim" in out.stderr
