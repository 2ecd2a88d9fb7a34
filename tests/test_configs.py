"""Every file in conf/ composes; the published runs compose to the right model; impossible ones fail early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from tests.conftest import CONF_DIR, ROOT, compose
from vit_exp.checks import validate
from vit_exp.errors import ConfigError, HardwareError

CONFIG_FILES = sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml") if not p.name.startswith("_"))
SHARED_BASES = sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("_*.yaml"))  # composed by every sibling


def _overrides_for(path: Path) -> tuple[str, list[str]]:
    """(primary config, overrides) that compose ``path``: a primary config itself, or its group option."""
    if len(path.parts) == 1:
        return path.stem, []
    return "train", [f"{path.parent.as_posix()}={path.stem}"]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=str)
def test_every_config_file_composes(path: Path, tmp_path: Path) -> None:
    config_name, overrides = _overrides_for(path)
    cfg = compose(config_name, overrides, tmp_path)
    assert {"model", "data", "trainer", "optim"} <= set(cfg)
    try:
        name = validate(cfg).arch
    except ConfigError as e:  # values only the user can give, e.g. data.root of data=imagefolder (or imagenet's)
        assert "needs values you have not given" in str(e) or "data.root=" in str(e)
        return
    assert name.startswith(cfg.model.name.replace("_r50", "_resnet50"))


@pytest.mark.parametrize("base", SHARED_BASES, ids=str)
def test_every_option_builds_on_its_groups_shared_base(base: Path, tmp_path: Path) -> None:
    """``data/_base.yaml``, ``model/_base.yaml``: every option of the group composes them, changing what differs."""
    from omegaconf import OmegaConf

    group = base.parent.as_posix()
    shared = OmegaConf.load(CONF_DIR / base)
    if group == "model":  # @package _global_: model.*, patch, res
        shared = [*(f"model.{k}" for k in shared.model.keys()), "patch", "res"]
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("[!_]*.yaml")):
        cfg = compose("train", [f"{group}={option}"], tmp_path)
        node = cfg if group == "model" else cfg[group]
        missing = [k for k in shared if not _has(node, k)]
        assert not missing, f"{group}={option} lacks {missing} of {base}"


def _has(node, key: str) -> bool:
    """``key`` (one dot at most) is in ``node``, whatever its value (``in`` is False for a ``???`` value)."""
    head, _, rest = key.partition(".")
    return head in node.keys() and (not rest or rest in node[head].keys())


def test_conf_has_the_groups_users_type() -> None:
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert {"model", "hw", "trainer", "data", "optim", "sched", "logger", "callbacks", "experiment", "debug"} <= groups
    assert {
        "vit_small",
        "vit_base",
        "vit_large",
        "vit_base_r50",
        "vit_tiny",
        "vit_base_p16",
        "vit_base_p32",
        "vit_large_p16",
    } <= {p.stem for p in (CONF_DIR / "model").iterdir()}
    assert {"cpu", "gpu", "ddp", "fsdp", "tpu"} <= {p.stem for p in (CONF_DIR / "hw").iterdir()}
    assert {p.name for p in (CONF_DIR / "hw").iterdir()} == {p.name for p in (CONF_DIR / "trainer").iterdir()}


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (["model=vit_base_p16", "res=384", "trainer=tpu"], "vit_base_patch16_384"),
        (["model=vit_base_p16", "res=384", "hw=tpu"], "vit_base_patch16_384"),
        (["model=vit_base", "patch=32", "res=384"], "vit_base_patch32_384"),
        (["model=vit_large", "res=224"], "vit_large_patch16_224"),
        (["model=vit_large_p16"], "vit_large_patch16_224"),
        (["model=vit_base_p32"], "vit_base_patch32_224"),
        (["model=vit_base_r50", "res=384"], "vit_base_resnet50_384"),
        ([], "vit_micro_patch4_16"),
        (
            ["experiment=vit_b16_imagenet_finetune", "model.pretrained={tmp}/w.npz", "data.root={tmp}"],
            "vit_base_patch16_384",
        ),
        # the command line wins over a preset
        (["experiment=vit_b16_imagenet_finetune", "model.pretrained={tmp}/w.npz", "data.root={tmp}", "patch=32"],
         "vit_base_patch32_384"),
    ],
)
def test_published_runs_compose(overrides: list[str], name: str, tmp_path: Path) -> None:
    (tmp_path / "w.npz").touch()  # weights to fine-tune must exist
    cfg = compose("train", [o.format(tmp=tmp_path) for o in overrides], tmp_path)
    assert validate(cfg).arch == name
    assert cfg.data.img_size == cfg.model.img_size


@pytest.mark.parametrize("choice", ["trainer=tpu", "hw=tpu"])
def test_tpu_profile_is_xla_with_the_strategy_by_device_count(choice: str, tmp_path: Path) -> None:
    trainer = compose("train", [choice], tmp_path).trainer
    assert (trainer.accelerator, trainer.strategy, trainer.precision) == ("tpu", "auto", "bf16-true")


def test_hw_profiles_set_precision(tmp_path: Path) -> None:
    assert compose("train", ["hw=cpu"], tmp_path).trainer.precision == "32-true"
    assert compose("train", ["hw=gpu"], tmp_path).trainer.precision == "bf16-mixed"
    assert compose("train", ["trainer=ddp"], tmp_path).trainer.strategy == "ddp"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=vit_base_r50", "patch=32"], "hybrid"),
        (["model=vit_base", "res=100"], "not divisible by patch size 16"),
        (["model=vit_huge", "res=384"], "not divisible by patch size 14"),
        (["model.name=vit_bse"], "Did you mean vit_base"),
        (["data.img_size=32"], "res="),
        (["model.num_classes=7"], "data.num_classes"),
        (["experiment=vit_b16_imagenet_finetune"], "model.pretrained=..."),
        (["data=imagefolder"], "data.num_classes=... data.root=..."),
        (["model.pretrained=/no/such/file.pth"], "does not exist"),
    ],
)
def test_impossible_configs_fail_with_the_fix(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose("train", overrides, tmp_path)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_impossible_config_fails_before_anything_is_built(tmp_path: Path) -> None:
    from vit_exp import run

    cfg = compose("train", ["model=vit_base_r50", "patch=32"], tmp_path / "run")
    with pytest.raises(ConfigError):
        run.train(cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_model_option_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="vit_foo"):
        compose("train", ["model=vit_foo"], tmp_path)


def test_tpu_on_a_machine_without_one_says_so(tmp_path: Path) -> None:
    from lightning.pytorch.accelerators import XLAAccelerator

    from vit_exp import run

    if XLAAccelerator.is_available():
        pytest.skip("this machine has a TPU")
    cfg = compose("train", ["model=vit_base_p16", "res=384", "trainer=tpu"], tmp_path / "run")
    assert validate(cfg).arch == "vit_base_patch16_384"
    with pytest.raises(HardwareError, match="TPU"):
        run.train(cfg)


def test_cfg_job_answers_without_lightning() -> None:
    """`python train.py --cfg job` does not import Lightning, so it answers at once. (It names the model through
    vit_exp.models.variants, torch-free itself; torch comes in only while vit_exp.models/__init__ imports it.)"""
    code = (
        "import sys, runpy; sys.argv = ['train.py', '--cfg', 'job']; runpy.run_path('train.py', run_name='__main__');"
        "heavy = {'lightning', 'lightning.pytorch'} & set(sys.modules); assert not heavy, heavy"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "name: vit_micro" in out.stdout


@pytest.mark.parametrize(("profile", "strategy"), [("fsdp", "AtomicFSDPStrategy"), ("ddp_sim", "DDPStrategy")])
def test_strategy_objects_instantiate(profile: str, strategy: str, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    obj = instantiate(compose("train", [f"hw={profile}"], tmp_path).trainer.strategy)
    assert type(obj).__name__ == strategy
    if profile == "fsdp":  # sharded per encoder block
        assert "Block" in repr(obj.kwargs["auto_wrap_policy"])


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from vit_exp.checkpoints import checkpoint_config

    (tmp_path / "photo.png").write_bytes(b"\x89PNG not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read .*photo.png as a checkpoint"):
        checkpoint_config(tmp_path / "photo.png")
    torch_file = tmp_path / "weights.pth"
    import torch

    torch.save({"pos_embed": torch.zeros(1)}, torch_file)
    with pytest.raises(ConfigError, match="stores no run config.*model.pretrained"):
        checkpoint_config(torch_file)


def test_the_progress_bar_redraws_four_times_a_second_and_is_off_where_the_trainers_bar_is(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

    from vit_exp.build import build_trainer

    bars = [c for c in build_trainer(compose("train", [], tmp_path), []).callbacks if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and isinstance(bars[0], RichProgressBar) and bars[0].refresh_rate == 4
    off = build_trainer(compose("train", ["++trainer.enable_progress_bar=false"], tmp_path), [])  # Lightning: no error
    assert not any(isinstance(c, ProgressBar) for c in off.callbacks)
    assert compose("train", ["hw=tpu"], tmp_path).callbacks.progress_bar.enabled is False
