"""Sweeps: a grid with a failing (NaN) job, an Optuna search, submitit's local launcher; the summary table;
one offline W&B run per job, read back from its .wandb file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.scale.conftest import QUICK, read_csv
from tests.scale.wandb_records import offline_runs
from vit_exp.errors import ConfigError


def test_a_failing_job_is_recorded_and_the_sweep_goes_on_with_one_wandb_run_per_job(cli, tmp_path: Path) -> None:
    """Job 1 has a NaN head bias, so its first loss is NaN: it fails; job 0 still runs and is reported."""
    out = cli(
        "-m",
        *QUICK,
        "+model.head_bias_init=0.0,nan",
        "logger=wandb",
        "logger.wandb.tags=[scale,test]",
        "hydra.sweep.dir=sweep",
        expect=None,
    )
    assert out.returncode == 1  # Hydra's basic sweeper reports the failed job at the end, after every job ran
    sweep = tmp_path / "sweep"
    jobs = read_csv(sweep / "summary.csv")
    assert [(j["model.head_bias_init"], j["status"]) for j in jobs] == [("0.0", "COMPLETED"), ("nan", "FAILED")]
    assert float(jobs[0]["objective"]) == float(jobs[0]["best_val_top1"]) > 10.0 and jobs[0]["top1"]
    assert jobs[1]["error"].startswith("NonFiniteLossError: the training loss is nan at step 0")
    assert "| job | model.head_bias_init | status |" in (sweep / "summary.md").read_text()

    (ok,), (failed,) = (offline_runs(sweep / job) for job in ("0", "1"))
    assert ok.exit_code == 0 and failed.exit_code == 1  # each run ends with its job's real state
    assert ok.group == failed.group == "sweep" and ok.run_id != failed.run_id  # hydra.sweep.dir: shared by its jobs
    assert ok.project == "vit_exp" and ok.tags == ["scale", "test"]
    assert ok.config["config"]["model"]["name"] == "vit_test"  # the resolved config
    logged = {key for row in ok.history for key in row}
    assert {"train/loss", "val/top1", "test/top1", "trainer/global_step"} <= logged
    val = [row["val/top1"] for row in ok.history if "val/top1" in row]
    assert math.isclose(100 * max(val), float(jobs[0]["best_val_top1"]), abs_tol=1e-3)


def test_optuna_search_maximises_val_top1_and_lists_every_trial(cli, tmp_path: Path) -> None:
    cli(
        "hparams_search=digits_optuna",  # sets MULTIRUN itself: no -m
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *QUICK,
        "hydra.sweep.dir=search",
    )
    search = tmp_path / "search"
    trials = read_csv(search / "summary.csv")
    assert len(trials) == 3 and {t["status"] for t in trials} == {"COMPLETED"}
    assert {"optim.lr", "optim.weight_decay", "sched.warmup_steps"} <= set(trials[0])
    best = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(float(t["objective"]) for t in trials)


def test_a_launcher_without_a_task_count_stops_in_one_line_before_any_job(cli, tmp_path: Path) -> None:
    """trainer.devices=-1 (hw=ddp's) is no number of tasks to start: one error line, no traceback, and the sweep
    directory Hydra made for it (nothing in it but multirun.yaml) is removed; a folder with files of its own stays."""
    out = cli("-m", *QUICK, "launcher=local", "trainer.devices=-1", "hydra.sweep.dir=sweep", expect=1)
    assert out.stderr.strip().splitlines() == [
        "error: trainer.devices=-1: the launcher starts one task per device (hydra.launcher.tasks_per_node) and "
        "needs their number; set trainer.devices to the number of GPUs per node (e.g. trainer.devices=8), not -1 "
        "or auto"
    ]
    assert not (tmp_path / "sweep").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    cli("-m", *QUICK, "launcher=local", "trainer.devices=-1", "hydra.sweep.dir=kept", expect=1)
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"


def test_submitit_local_launcher_runs_each_job_in_its_own_process(cli, tmp_path: Path) -> None:
    """launcher=local: hydra-submitit-launcher's path (pickled jobs, .submitit logs) without a cluster."""
    cli("-m", *QUICK, "launcher=local", "optim.lr=1e-3,3e-4", "hydra.sweep.dir=sweep", timeout=600)
    sweep = tmp_path / "sweep"
    assert list((sweep / ".submitit").iterdir())
    jobs = read_csv(sweep / "summary.csv")
    assert [(float(j["optim.lr"]), j["status"]) for j in jobs] == [(1e-3, "COMPLETED"), (3e-4, "COMPLETED")]
    assert all((sweep / j["job"] / "results.json").is_file() for j in jobs)


# A job of two ranks whose rank 1 raises at step 2 (job 0) or never (job 1).
CRASH_RANK_1 = ["+callbacks.crash._target_=tests.scale.helpers.CrashOnRank", "+callbacks.crash.rank=1"]


def test_a_rank_that_fails_fails_its_job_and_the_sweep_goes_on(cli, tmp_path: Path) -> None:
    """Lightning starts rank 1 (hw=ddp_sim). Rank 0 is in a 8 s step when rank 1 dies: Lightning's own watcher
    would SIGKILL this process, sweep and all, within 5 s; vit_exp.launch.RankWatcher fails the job instead."""
    out = cli("-m", *QUICK, "hw=ddp_sim", *CRASH_RANK_1, "+callbacks.crash.step=2,-1",
              "+callbacks.crash.others_stall_s=8", "hydra.sweep.dir=sweep", expect=None)  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]  # the basic sweeper reports the failed job after every job ran
    jobs = read_csv(tmp_path / "sweep" / "summary.csv")
    assert [(j["callbacks.crash.step"], j["status"]) for j in jobs] == [("2", "FAILED"), ("-1", "COMPLETED")]
    assert jobs[0]["error"].startswith("RankFailedError: rank 1 (pid ") and "exited with code 1" in jobs[0]["error"]
    assert "RuntimeError: crash on rank 1 at step 2" in out.stderr  # the rank's own traceback, for the user


def test_one_task_per_rank_writes_one_run_directory_and_a_failed_rank_fails_only_its_job(cli, tmp_path: Path) -> None:
    """launcher=local starts trainer.devices tasks per job, as launcher=slurm does on a cluster: the tasks are the
    job's ranks (one world of 2), rank 1 writes nothing of its own, and a rank's failure is that job's.
    (PYTHONPATH: submitit's tasks start in this directory and must import tests.scale.helpers.)"""
    out = cli("-m", *QUICK, "launcher=local", "hw=ddp_sim", *CRASH_RANK_1, "+callbacks.crash.step=2,-1",
              "hydra.sweep.dir=sweep", expect=None, timeout=600, PYTHONPATH=str(ROOT))  # fmt: skip
    assert out.returncode == 1, out.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = read_csv(sweep / "summary.csv")
    assert [(j["callbacks.crash.step"], j["status"]) for j in jobs] == [("2", "FAILED"), ("-1", "COMPLETED")]
    assert (
        jobs[0]["error"]
        == "RankFailedError: Job (task=1) failed during processing: RuntimeError: crash on rank 1 at step 2"
    )
    assert float(jobs[1]["top1"]) > 0 and (sweep / "1" / "results.json").is_file()

    submitit_logs = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert submitit_logs.count("Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # one world per job
    assert submitit_logs.count("Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2") == 2
    for job in ("0", "1"):
        logs = list((sweep / job).glob("*.log"))
        assert (
            len(logs) == 1 and "GLOBAL_RANK: 0" in logs[0].read_text() and "GLOBAL_RANK: 1" not in logs[0].read_text()
        )
    records = sorted(p.name for p in (sweep / "jobs").iterdir())
    assert records == ["0.json", "1.json"]  # rank 0's only (rank 1 runs no Hydra callbacks)


def _launcher_params(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    from tests.conftest import compose

    cfg = compose("train", list(overrides), return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.vit_exp_launcher.submitit_ranks.SlurmLauncher"
    return params


def test_slurm_jobs_get_one_task_per_gpu_and_srun_ends_a_job_whose_task_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hydra_plugins.vit_exp_launcher.submitit_ranks import make_executor

    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "srun").write_text("#!/bin/sh\n")  # submitit's SLURM executor looks for srun on PATH
    (stand_in / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in}{os.pathsep}{os.environ['PATH']}")

    params = _launcher_params("launcher=slurm", "hw=multinode", "trainer.devices=8", "trainer.num_nodes=4",
                              f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    executor = make_executor("slurm", params)
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit", "uid")
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --signal=USR2@120" in script
    assert "--kill-on-bad-exit=1" in next(line for line in script.splitlines() if line.startswith("srun"))

    with pytest.raises(ConfigError, match="trainer.devices=-1: .* set trainer.devices to the number of GPUs per node"):
        make_executor("slurm", _launcher_params("launcher=slurm", "hw=ddp", f"hydra.sweep.dir={tmp_path}"))
