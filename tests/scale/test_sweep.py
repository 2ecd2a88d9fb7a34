"""Sweeps: a grid with a failing (NaN) job, an Optuna search, submitit's local launcher; the summary table;
one offline W&B run per job, read back from its .wandb file."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from tests.scale.conftest import QUICK, read_csv
from tests.scale.wandb_records import offline_runs


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


def test_submitit_local_launcher_runs_each_job_in_its_own_process(cli, tmp_path: Path) -> None:
    """launcher=local: hydra-submitit-launcher's path (pickled jobs, .submitit logs) without a cluster."""
    cli("-m", *QUICK, "launcher=local", "optim.lr=1e-3,3e-4", "hydra.sweep.dir=sweep", timeout=600)
    sweep = tmp_path / "sweep"
    assert list((sweep / ".submitit").iterdir())
    jobs = read_csv(sweep / "summary.csv")
    assert [(float(j["optim.lr"]), j["status"]) for j in jobs] == [(1e-3, "COMPLETED"), (3e-4, "COMPLETED")]
    assert all((sweep / j["job"] / "results.json").is_file() for j in jobs)
