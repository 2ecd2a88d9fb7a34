"""FlexiViT in a run: a patch size per training step drawn from (seed, step), evaluation at any size (eval.py
``model.flexi.eval_patch_size=N``), and the impossible sizes refused before anything is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, compose
from vit_exp import run
from vit_exp.callbacks.flexi import draw_patch_size
from vit_exp.checks import validate
from vit_exp.errors import ConfigError
from vit_exp.models.layers import PatchEmbed

FLEXI = ["model.flexi.patch_sizes=[2,4,8]"]  # vit_test: patch 4 at res 16


def test_the_draw_is_a_function_of_seed_and_step() -> None:
    sizes = [2, 4, 8]
    run_a = [draw_patch_size(sizes, 0, step) for step in range(60)]
    assert run_a == [draw_patch_size(sizes, 0, step) for step in range(60)]  # a resumed run draws the same
    assert set(run_a) == set(sizes)
    assert run_a != [draw_patch_size(sizes, 1, step) for step in range(60)]  # another seed, other draws


def test_training_draws_a_size_per_step_and_evaluates_at_the_eval_size(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``debug=limit`` run (2 epochs of 5 steps) with patch sizes; then eval.py at three sizes."""
    calls: list[tuple[bool, int]] = []  # (in a training step, size) of every forward of the backbone
    original = PatchEmbed.forward

    def record(self: PatchEmbed, x):
        calls.append((self.training, self.flexi.patch_size))
        return original(self, x)

    monkeypatch.setattr(PatchEmbed, "forward", record)
    limit = ["debug=limit", "trainer.max_epochs=2", "++trainer.limit_train_batches=5"]  # TINY's keys win over debug
    trained = run.train(tiny_cfg(*limit, "seed=3", *FLEXI))
    assert trained.steps == 10
    steps = [p for training, p in calls if training]
    assert steps == [draw_patch_size([2, 4, 8], 3, s) for s in range(10)]
    assert len(set(steps)) > 1
    assert {p for training, p in calls if not training} == {4}  # validation and test at the model's own patch

    monkeypatch.setattr(run, "typed_keys", lambda: {"model.flexi.eval_patch_size"})  # as typed on eval.py's line
    top1, loss = {}, {}
    for size in (2, 4, 8):
        cfg = tiny_cfg(f"ckpt_path={trained.checkpoint}", f"model.flexi.eval_patch_size={size}", config_name="eval",
                       run_dir=tmp_path / f"eval{size}")  # fmt: skip
        calls.clear()
        top1[size], loss[size] = run.evaluate(cfg).top1, _test_loss(tmp_path / f"eval{size}")
        assert {p for _, p in calls} == {size}
    assert top1[4] == pytest.approx(trained.top1)  # the run's own test, at its eval size
    assert len(set(loss.values())) == 3

    # eval.py itself: the size typed on its command line survives the checkpoint's own model config
    cmd = [sys.executable, "eval.py", f"ckpt_path={trained.checkpoint}", "model.flexi.eval_patch_size=8",
           f"hydra.run.dir={tmp_path / 'cli'}"]  # fmt: skip
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _test_loss(tmp_path / "cli") == pytest.approx(loss[8])


def _test_loss(run_dir: Path) -> float:
    """The test loss an evaluation wrote to its ``metrics.csv``."""
    import csv

    (path,) = run_dir.rglob("metrics.csv")
    return next(float(r["test/loss"]) for r in csv.DictReader(path.open()) if r.get("test/loss"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.flexi.patch_sizes=[2,3]"], "model.flexi.patch_sizes: patch 3 does not divide res=16; use sizes from"),
        (["model.flexi.eval_patch_size=5"], "model.flexi.eval_patch_size: patch 5 does not divide res=16"),
        (["model.flexi.patch_sizes=4"], "model.flexi.patch_sizes=4 is not a list of patch sizes"),
        ([*FLEXI, "callbacks=none"], "model.flexi.patch_sizes is drawn per step by callbacks.flexi"),
        (["model.flexi.interpolation=nearest"], "model.flexi.interpolation=nearest is not bilinear or bicubic"),
    ],
)
def test_impossible_patch_sizes_fail_before_compute(tiny_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        validate(tiny_cfg(*overrides))


def test_hybrid_models_are_refused(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="model.flexi needs a plain ViT"):
        validate(tiny_cfg("model=vit_base_r50", "res=32", "model.flexi.patch_sizes=[16,32]"))


def test_the_flexivit_preset_composes_and_its_tiny_version_trains(tiny_cfg, tmp_path: Path) -> None:
    cfg = compose("train", ["experiment=flexivit_b_i1k", f"data.root={tmp_path}"], tmp_path / "run")
    assert validate(cfg).arch == "vit_base_patch16_240"
    assert cfg.model.flexi.patch_sizes == [48, 40, 30, 24, 20, 16, 15, 12, 10, 8] and cfg.model.flexi.eval_patch_size == 16
    tiny = ["data=digits", "model=vit_test", "patch=16", "data.batch_size=4", "data.eval_batch_size=8",
            "++trainer.limit_test_batches=1", "callbacks.plots=null"]  # fmt: skip
    results = run.train(tiny_cfg("experiment=flexivit_b_i1k", *tiny))
    assert results.model == "vit_test_patch16_240" and results.steps == 3
