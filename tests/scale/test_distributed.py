"""Hydra + Lightning DDP on 2 CPU processes (hw=ddp_sim): one run directory, written by rank 0 only; sweeps of
DDP jobs; FSDP's sharded checkpoint saved and resumed on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.scale.conftest import QUICK, read_csv

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


def test_fsdp_sharded_checkpoint_is_saved_and_resumed_on_two_cpu_processes(cli, tmp_path: Path) -> None:
    """hw=fsdp as composed (one shard unit per Block, sharded checkpoints), on 2 CPU processes over gloo.

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
    ]
    cli(*QUICK, *fsdp_on_cpu, "trainer.max_epochs=1")
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and {p.name for p in last.iterdir()} >= {"__0_0.distcp", "__1_0.distcp", "meta.pt"}
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 5
    results = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert results["top1"] is not None and results["params"] == 27_946  # vit_test whole, not one rank's shard

    resumed = cli(*QUICK, *fsdp_on_cpu, "trainer.max_epochs=2")
    assert "Restoring states from the checkpoint" in resumed.stdout + resumed.stderr
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 10  # 5 restored + 5 new


def test_fsdp_on_the_cpu_without_the_test_shim_says_what_to_use(cli) -> None:
    out = cli(*QUICK, "hw=fsdp", "trainer.accelerator=cpu", "trainer.precision=32-true", expect=1)
    assert "FSDP on CUDA GPUs only" in out.stderr and "hw=ddp_sim" in out.stderr
