"""End to end on the embedded digits: fast_dev_run per model, accuracy, outputs, train -> eval, resume, loggers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CONF_DIR, ROOT
from vit_exp import run
from vit_exp.errors import ConfigError
from vit_exp.models import create_model, get_pretrained_cfg
from vit_exp.results import RESULTS_FILE, Results, model_card_results

MODEL_CONFIGS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml") if not p.stem.startswith("_"))  # _base: shared


@pytest.mark.parametrize("model", MODEL_CONFIGS)
def test_fast_dev_run_every_model_at_tiny_size(model: str, tiny_cfg) -> None:
    """Each model config (every family, the shorthands) trains a step, validates and tests, shrunk to 1 block."""
    patch = {"vit_huge": 14}.get(model, 4 if model in ("vit_test", "vit_micro") else 16)
    if model.endswith("_p32"):
        patch = 32
    cfg = tiny_cfg(
        f"model={model}",
        f"res={2 * patch}",
        "debug=fast_dev_run",
        "logger=csv",
        "+model.depth=1",
        "+model.embed_dim=32",
        "+model.num_heads=2",
    )
    results = run.train(cfg)
    assert results.top1 is not None and results.checkpoint is None  # fast_dev_run writes no checkpoint
    assert results.model.startswith(cfg.model.name.replace("_r50", "_resnet50"))


def test_short_digits_run_learns(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "model=vit_micro",
        "trainer.max_epochs=10",
        "++trainer.limit_train_batches=1.0",
        "++trainer.limit_val_batches=1.0",
        "sched.warmup_steps=20",
    )
    results = run.train(cfg)
    # Chance is 10%; the full default run (40 epochs) reaches 97.21-97.49% (torch 2.9.0, 2.14.1; by CPU). These
    # 10 epochs land on different sides of 80% with the two versions (76.04% with torch 2.9.0).
    assert results.top1 > 60.0, results
    assert results.top5 > results.top1 and results.steps == 10 * (1258 // 64)


def test_outputs_train_then_eval_round_trip(tiny_cfg, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trained = run.train(tiny_cfg("trainer.max_epochs=2", run_dir=tmp_path / "train"))
    out = tmp_path / "train"
    assert {"results.json", "metrics.csv"} <= {p.name for p in out.iterdir()}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert Results.load(out / RESULTS_FILE) == trained
    assert trained.checkpoint == str(out / "checkpoints" / "best.ckpt") and trained.params > 0
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert {"train/loss", "val/top1", "val/top5", "test/top1", "test/top5", "lr-AdamW/pg1"} <= set(header.split(","))
    assert "test top-1" in capsys.readouterr().out  # the summary table

    evaluated = run.evaluate(tiny_cfg(f"ckpt_path={trained.checkpoint}", config_name="eval", run_dir=tmp_path / "eval"))
    assert evaluated.top1 == pytest.approx(trained.top1) and evaluated.top5 == pytest.approx(trained.top5)
    assert evaluated.model == trained.model and evaluated.images == 359
    printed = capsys.readouterr().out
    assert f"Top 1 Accuracy: {trained.top1:.2f}%" in printed and "Top 5 Accuracy:" in printed
    assert (tmp_path / "eval" / RESULTS_FILE).is_file()


def test_eval_rejects_a_checkpoint_for_other_classes(tiny_cfg, tmp_path: Path) -> None:
    trained = run.train(tiny_cfg("debug=limit", run_dir=tmp_path / "train"))
    cfg = tiny_cfg(f"ckpt_path={trained.checkpoint}", "data.num_classes=7", config_name="eval", run_dir=tmp_path / "e")
    with pytest.raises(ConfigError, match="10 classes"):
        run.evaluate(cfg)


def test_eval_of_published_weights_prints_the_model_card_figures(tiny_cfg, tmp_path: Path, capsys) -> None:
    """A timm-layout .pth through model.pretrained; a registered name gets the card's figures beside ours."""
    weights = tmp_path / "vit_test.pth"
    torch.save(create_model("vit_test", num_classes=10, img_size=16).state_dict(), weights)
    results = run.evaluate(tiny_cfg(f"model.pretrained={weights}", config_name="eval"))
    assert results.top1 is not None and results.published_top1 is None  # vit_test has no published weights
    assert "Top 1 Accuracy" in capsys.readouterr().out

    card = get_pretrained_cfg("vit_base_patch16_224")
    published = Results(
        "vit_base_patch16_224",
        "imagenet",
        "val",
        81.0,
        95.5,
        1,
        1.0,
        ".",
        50000,
        published_top1=card.top1,
        published_top5=card.top5,
    )
    text = model_card_results(published)
    assert "Top 1 Accuracy: 81.00%   (model card, ImageNet: 81.78%)" in text
    assert "Top 5 Accuracy: 95.50%   (model card, ImageNet: 96.13%)" in text


def test_eval_of_a_file_that_is_not_ours_says_what_to_do(tiny_cfg, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    torch.save(create_model("vit_test", num_classes=10, img_size=16).state_dict(), weights)
    with pytest.raises(ConfigError, match="model.pretrained="):
        run.evaluate(tiny_cfg(f"ckpt_path={weights}", config_name="eval"))


def test_eval_of_a_directory_that_is_no_checkpoint_says_what_to_do(tiny_cfg, tmp_path: Path) -> None:
    """Sharded (FSDP) checkpoints are directories, and are read (tests/scale/test_distributed.py); others are not."""
    (tmp_path / "outputs").mkdir()
    with pytest.raises(ConfigError, match="not a sharded checkpoint of ours .*pass a .ckpt written by train.py"):
        run.evaluate(tiny_cfg(f"ckpt_path={tmp_path / 'outputs'}", config_name="eval"))


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # a resumed run writes to its own directory
def test_resume_from_last_continues_the_step_count(tiny_cfg, tmp_path: Path) -> None:
    first = run.train(tiny_cfg("trainer.max_epochs=1", run_dir=tmp_path / "a"))
    assert first.steps == 3 and first.last_checkpoint == str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    assert torch.load(first.last_checkpoint, weights_only=True)["global_step"] == 3
    resumed = run.train(tiny_cfg("trainer.max_epochs=2", f"ckpt_path={first.last_checkpoint}", run_dir=tmp_path / "b"))
    assert resumed.steps == 6  # 3 restored + 3 new, not 3 from scratch
    steps = [line.split(",") for line in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert min(int(row[3]) for row in steps if row[3]) >= 3  # the new run logs from step 3 on


def test_wandb_logs_offline_without_a_key(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    cfg = tiny_cfg("logger=wandb", "logger.wandb.init_timeout=30", run_dir=tmp_path / "run")
    results = run.train(cfg)
    assert results.top1 is not None
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "run" / "metrics.csv").is_file()  # the CSV metrics are written beside it


def test_tensorboard_logger_writes_events(tiny_cfg, tmp_path: Path) -> None:
    run.train(tiny_cfg("logger=tensorboard", run_dir=tmp_path / "run"))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_writes_the_run_directory(tmp_path: Path) -> None:
    """`python train.py` as a user runs it: the composed config, checkpoints, metrics, results and the table."""
    run_dir = tmp_path / "cli"
    cmd = [sys.executable, "train.py", "model=vit_test", "debug=limit", f"hydra.run.dir={run_dir}"]
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["model"] == "vit_test_patch4_16" and results["steps"] == 10
    assert "test top-1" in out.stdout  # the summary table


def test_cli_reports_an_impossible_config_without_a_traceback_and_leaves_no_run_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "model=vit_base_r50", "patch=32", f"hydra.run.dir={run_dir}"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: model vit_base_r50") and "Traceback" not in out.stderr
    assert not run_dir.exists()  # it held only .hydra/ and the log: removed with the failed validation


@pytest.mark.slow
def test_default_run_meets_its_promise(tmp_path: Path) -> None:
    """`python train.py` with no arguments reaches >= 95% test top-1 (its time is in the README, measured)."""
    out = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / RESULTS_FILE).read_text())["top1"] >= 95.0
