"""The checks before a run (values, paths, batches) and after its fit (it took steps), and what eval restores."""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import ListConfig, OmegaConf
from PIL import Image

from tests.conftest import ROOT, compose
from vit_exp import run
from vit_exp.build import build_module, restore_training_run, typed_keys
from vit_exp.checks import (
    check_shared_memory,
    check_trained,
    check_training_batches,
    check_val_interval,
    check_values,
    validate,
)
from vit_exp.cli import CONF_DIR
from vit_exp.errors import ConfigError
from vit_exp.models import create_model


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=abc"], "trainer.max_epochs=abc is not a whole number >= 1 (or -1: no limit"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not a whole number >= 1"),
        (["trainer.max_steps=2.5"], "trainer.max_steps=2.5 is not a whole number >= 1, or -1"),
        (["trainer.devices=0"], "trainer.devices=0 is not a device count >= 1"),
        (["trainer.accelerator=gpuu"], "trainer.accelerator=gpuu is not one of cpu, gpu, cuda, tpu, mps, auto"),
        (["trainer.precision=bf17"], "trainer.precision=bf17 is not one of 16-true, 16-mixed, bf16-true"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is not a whole number >= 1"),
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 is not a number >= 0"),
        (["data.batch_size=0"], "data.batch_size=0 is not a whole number >= 1; set e.g. data.batch_size=64"),
        (["data.num_workers=-2"], "data.num_workers=-2 is not a whole number >= 0"),
        (["optim.lr=-1"], "optim.lr=-1 is not a number > 0; set e.g. optim.lr=1e-3"),
        (["optim.weight_decay=abc"], "optim.weight_decay=abc is not a number >= 0"),
        (["optim=sgd", "optim.momentum=1.5"], "optim.momentum=1.5 is not a number in [0, 1)"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] is not two numbers in [0, 1); set e.g. optim.betas=[0.9,0.999]"),
        (["optim.betas=[0.9,1.0]"], "optim.betas=[0.9,1.0] is not two numbers in [0, 1)"),
        (["+optim.eps=0"], "optim.eps=0 is not a number > 0"),
        (["data.crop_pct=1.5"], "data.crop_pct=1.5 is not a number in (0, 1] (or null: the model's)"),
        (["data.interpolation=foo"], "data.interpolation=foo is not one of bicubic, bilinear, box, hamming, lanczos"),
        (["data.mean=[0.5]"], "data.mean=[0.5] is not three numbers, one per channel (or null)"),
        (["data.std=[0.5,0,0.5]"], "data.std=[0.5,0,0.5] is not three numbers > 0"),
        (["data.test_split=tset"], "data.test_split=tset is not one of train, val, test; set e.g. data.test_split=val"),
        (["sched.warmup_steps=-5"], "sched.warmup_steps=-5 is not a whole number >= 0"),
        (["sched.decay=step"], "sched.decay=step is not one of cosine, linear, constant"),
        (["seed=abc"], "seed=abc is not a whole number"),
        (["loss.label_smoothing=1.5"], "loss.label_smoothing=1.5 is not a number in [0, 1)"),
        (["compile=maybe"], "compile=maybe is not true or false"),
        (["model.drop_path_rate=2"], "model.drop_path_rate=2 is not a probability in [0, 1); set e.g. model.drop_path"),
        (["+model.attn_drop_rate=-0.1"], "model.attn_drop_rate=-0.1 is not a probability in [0, 1)"),
        (["+model.drop_rate=1"], "model.drop_rate=1 is not a probability in [0, 1)"),
        (["lr_scaling.rule=linear"], "lr_scaling.rule=linear needs lr_scaling.base_batch"),
        (["mixup={mixup_alpha: -1}"], "one of them must be > 0 (and neither < 0)"),
        (["data=jft", "data.source.urls.train=x.tar", "data.source.urls.val=x.tar", "data.source.samples_per_epoch.train=8",
          "data.repeated_aug=3"], "data.repeated_aug=3 repeats the images of a map-style data set"),
    ],
)
def test_values_users_type_are_checked_with_the_key_the_value_and_the_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate(compose("train", overrides, Path("/tmp/unused")))
    assert message in str(error.value)


def test_the_interpolations_checked_are_those_the_transforms_take() -> None:
    from vit_exp.data.transforms import INTERPOLATIONS
    from vit_exp.rules import INTERPOLATIONS as CHECKED

    assert CHECKED == tuple(sorted(INTERPOLATIONS))


def test_eval_checks_the_split_it_is_asked_for() -> None:
    check_values(compose("eval", ["ckpt_path=x.ckpt", "split=val"], Path("/tmp/unused")))
    check_values(compose("eval", ["ckpt_path=x.ckpt"], Path("/tmp/unused")))  # null: the data's test split
    with pytest.raises(ConfigError, match=r"^split=foo is not one of train, val, test \(or null: data.test_split\)"):
        check_values(compose("eval", ["ckpt_path=x.ckpt", "split=foo"], Path("/tmp/unused")))


def test_the_shipped_defaults_pass_the_value_checks() -> None:
    profiles = [[f"hw={p.stem}"] for p in sorted((Path(CONF_DIR) / "hw").glob("*.yaml"))]
    for overrides in ([], ["optim=sgd", "sched=warmup_linear"], ["debug=fast_dev_run"], *profiles):
        check_values(compose("train", overrides, Path("/tmp/unused")))


def test_a_bad_value_fails_on_the_command_line_before_anything_is_built(tmp_path: Path) -> None:
    cmd = [sys.executable, "train.py", "optim.lr=-1", f"hydra.run.dir={tmp_path / 'run'}"]
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: optim.lr=-1 is not a number > 0")
    assert "lr -1" not in out.stdout + out.stderr  # stopped before the batch plan was logged


def test_train_from_a_file_that_is_no_checkpoint_says_so(tiny_cfg, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=r"cannot read .*notes.txt as a checkpoint"):
        run.train(tiny_cfg(f"ckpt_path={text}"))
    with pytest.raises(ConfigError, match="ckpt_path .*missing.ckpt does not exist"):
        run.train(tiny_cfg(f"ckpt_path={tmp_path / 'missing.ckpt'}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.strategy=dpp", "You selected an invalid strategy name: `strategy='dpp'`"),
        ("++trainer.foo=1", "got an unexpected keyword argument 'foo'"),
        ("trainer.strategy=deepspeed", "you must have DeepSpeed installed"),
    ],
)
def test_what_lightnings_trainer_refuses_is_a_config_error_with_its_message(
    tiny_cfg, override: str, message: str
) -> None:
    """Not Hydra's "Error in call to target" (and its traceback): one line, with Lightning's own words."""
    if "deepspeed" in override and importlib.util.find_spec("deepspeed"):
        pytest.skip("DeepSpeed is installed here")
    with pytest.raises(ConfigError, match="^Lightning's Trainer refuses the trainer settings: .*" + re.escape(message)):
        run.train(tiny_cfg(override))


@pytest.mark.filterwarnings("ignore:checkpoint head")
def test_weights_that_are_no_checkpoint_or_of_another_model_say_so_in_one_line(tiny_cfg, tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ConfigError, match=rf"^model.pretrained={text}: cannot read {text} as a torch checkpoint"):
        run.train(tiny_cfg(f"model.pretrained={text}"))
    other = tmp_path / "tiny.pth"
    torch.save(create_model("vit_tiny_patch16_224", img_size=32, num_classes=10).state_dict(), other)
    with pytest.raises(ConfigError, match=rf"^model.pretrained={other}: checkpoint {other} does not fit vit_test"):
        run.train(tiny_cfg(f"model.pretrained={other}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def _image_folder(root: Path, train: int, classes: int = 3, loose: bool = False) -> Path:
    """root/{train,val}/<class>/*.png with ``train`` training images in all (or loose in train/ with ``loose``)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", classes)):
        for i in range(count):
            folder = root / split if loose and split == "train" else root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _folder_cfg(tiny_cfg, root: Path, *overrides: str):
    return tiny_cfg("data=imagefolder", f"data.root={root}", "data.num_classes=3", "data.num_workers=0", *overrides)


def test_a_training_split_without_a_full_batch_stops_before_fit(tiny_cfg, tmp_path: Path) -> None:
    """15 images and batch 64 (drop_last) gave zero training batches, tested random weights and exited 0."""
    cfg = _folder_cfg(tiny_cfg, _image_folder(tmp_path / "data", train=15), "data.batch_size=64")
    with pytest.raises(ConfigError, match=r"15 training images on 1 rank < data.batch_size=64.*lower data.batch_size"):
        run.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing was fitted


def test_shards_that_do_not_exist_stop_before_fit(tiny_cfg, tmp_path: Path) -> None:
    """Before, the first missing file came up as a FileNotFoundError traceback from the shard index."""
    shards = f"'{tmp_path}/shards/train-{{0000..0003}}.tar'"
    cfg = tiny_cfg("data=jft", f"data.source.urls.train={shards}", f"data.source.urls.val={shards}",
                   "data.source.samples_per_epoch.train=8", "data.num_classes=4", "data.batch_size=4")  # fmt: skip
    with pytest.raises(ConfigError) as error:
        run.train(cfg)
    assert str(error.value) == (
        f"data.source: 4 of the 4 shards of split 'train' do not exist, the first {tmp_path}/shards/train-0000.tar; "
        "point urls.train at your shards (e.g. urls.train='/data/train-{000000..000127}.tar')"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_trainer_the_splits_and_the_batches_are_checked_before_a_model_is_built(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large pretrained backbone takes seconds to build and load: what the Trainer or the data refuse stops the
    run first, in train.py and in eval.py."""
    built: list[str] = []
    monkeypatch.setattr(run, "build_model", lambda spec, model_cfg: built.append(spec.arch))
    shards = f"'{tmp_path}/shards/train-{{0000..0003}}.tar'"
    few = _image_folder(tmp_path / "data", train=15)
    for cfg in (
        tiny_cfg("trainer.strategy=dpp"),
        tiny_cfg("data=jft", f"data.source.urls.train={shards}", f"data.source.urls.val={shards}",
                 "data.source.samples_per_epoch.train=8", "data.num_classes=4", "data.batch_size=4"),
        _folder_cfg(tiny_cfg, few, "data.batch_size=64"),
        _folder_cfg(tiny_cfg, few, "data.batch_size=4", "++trainer.val_check_interval=4"),
    ):  # fmt: skip
        with pytest.raises(ConfigError):
            run.train(cfg)
    weights = tmp_path / "vit_test.pth"
    torch.save(create_model("vit_test", num_classes=4).state_dict(), weights)
    cfg = tiny_cfg("data=jft", f"data.source.urls.test={shards}", "data.num_classes=4", f"model.pretrained={weights}",
                   config_name="eval")  # fmt: skip
    with pytest.raises(ConfigError, match="^data.source: 4 of the 4 shards of split 'test' do not exist"):
        run.evaluate(cfg)
    assert built == []


def test_the_batch_count_is_per_rank() -> None:
    check_training_batches(64, ranks=1, batch_size=64)
    check_training_batches(None, ranks=8, batch_size=64)  # a stream: its length is unknown
    with pytest.raises(ConfigError, match=r"100 training images on 2 ranks \(50 per rank\) < data.batch_size=64"):
        check_training_batches(100, ranks=2, batch_size=64)


def test_a_validation_interval_longer_than_an_epoch_stops_before_fit(tiny_cfg, tmp_path: Path) -> None:
    """Lightning refuses it when fit starts (a ValueError and its traceback): 30 images, batch 8 per rank give 3
    training batches; 3 steps run, 4 stop first, with Lightning's boundary (its own check ran the 3)."""
    root = _image_folder(tmp_path / "data", train=30)
    run.train(_folder_cfg(tiny_cfg, root, "data.batch_size=8", "++trainer.val_check_interval=3"))
    with pytest.raises(ConfigError) as error:
        run.train(_folder_cfg(tiny_cfg, root, "data.batch_size=8", "++trainer.val_check_interval=4"))
    assert str(error.value) == (
        "trainer.val_check_interval=4 steps is longer than an epoch of 3 training batches; set it to at most 3, or to "
        "a fraction of an epoch (e.g. 0.5), or count steps across epochs with trainer.check_val_every_n_epoch=null"
    )


@pytest.mark.parametrize(
    ("trainer", "batches"),
    [({"limit_train_batches": 2}, 2), ({"limit_train_batches": 0.5}, 5), ({}, 10)],
)
def test_the_validation_interval_counts_the_limited_batches_per_rank(trainer: dict, batches: int) -> None:
    for interval, ok in ((batches, True), (batches + 1, False)):
        cfg = OmegaConf.create({"val_check_interval": interval, **trainer})
        if ok:
            check_val_interval(cfg, images=160, ranks=2, batch_size=8)  # 80 a rank: 10 batches
        else:
            with pytest.raises(ConfigError, match=f"an epoch of {batches} training batches"):
                check_val_interval(cfg, images=160, ranks=2, batch_size=8)
    no_validation = [{"check_val_every_n_epoch": None}, {"limit_val_batches": 0}, {"val_check_interval": 0.5}]
    for extra in no_validation:  # steps across epochs, no validation, a fraction of an epoch: not checked
        check_val_interval(OmegaConf.create({"val_check_interval": 1000, **extra}), images=160, ranks=2, batch_size=8)
    check_val_interval(OmegaConf.create({"val_check_interval": 1000}), images=None, ranks=1, batch_size=8)  # a stream


def _shm_of(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """/dev/shm as if it held ``size`` bytes (a container's is 64 MB by default)."""
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(size, 0, size))


def test_trainer_devices_is_read_as_lightning_reads_it() -> None:
    """One reading of trainer.devices for the rule, the hardware check and the processes per node (whose loader
    workers share the node's /dev/shm); Lightning's own parser of the string forms is the oracle."""
    from lightning.fabric.utilities.device_parser import _normalize_parse_gpu_string_input as lightnings

    from vit_exp.rules import Devices, read_devices

    for text in ("0,1", "3,", "1, 2", "-1", "2", " 2 "):
        parsed, ours = lightnings(text), read_devices(text)
        assert ours == (Devices(ids=tuple(parsed)) if isinstance(parsed, list) else read_devices(parsed)), text
    devices = [1, 2, "2", "auto", -1, "0,1", "3,", OmegaConf.create([0, 1, 2])]
    assert [read_devices(d).processes for d in devices] == [1, 2, 2, 1, 1, 2, 1, 3]  # auto and -1: a floor
    assert read_devices(-1) == Devices(every=True) and read_devices("auto") == Devices(auto=True)
    for refused in (0, "0", -2, "", " ", "two", "1,a", [], [-1], [0.5], True, 1.0, None):
        assert read_devices(refused) is None, refused


def test_batches_in_flight_must_fit_in_shared_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """2 batches a worker and the one being read: 2 workers, 20 images at 224 px ran in a 16 MB /dev/shm and 24
    died at their first batches (``unable to allocate shared memory``), after the model was built."""
    _shm_of(monkeypatch, 16 * 2**20)
    check_shared_memory(2, 20, 224, shm=tmp_path)  # 5 x 2.9 MB
    with pytest.raises(ConfigError) as error:
        check_shared_memory(2, 24, 224, shm=tmp_path)  # 5 x 3.4 MB
    assert str(error.value) == (
        f"data.num_workers=2 with data.batch_size=24 at 224 px keeps 17 MB of batches in {tmp_path} (5 x 3.4 MB: 2 a "
        "worker and the one being read), which holds 16 MB: set data.num_workers=1, or a smaller data.batch_size, or "
        "give the machine more shared memory (a container: docker run --shm-size=8g)"
    )
    check_shared_memory(1, 24, 224, shm=tmp_path)  # the count it suggests fits
    check_shared_memory(0, 10_000, 224, shm=tmp_path)  # no workers: nothing goes through shared memory
    check_shared_memory(2, 24, 224, shm=tmp_path / "absent")  # no /dev/shm: not Linux
    _shm_of(monkeypatch, 0)
    check_shared_memory(2, 24, 224, shm=tmp_path)  # a file system that reports no size: unknown, not full
    _shm_of(monkeypatch, 16 * 2**20)
    with pytest.raises(ConfigError, match=r"num_workers=1 on each of 2 processes with data.eval_batch_size=24 .* "
                       r"keeps 21 MB .*\(6 x 3.4 MB.*set data.num_workers=0"):  # fmt: skip
        check_shared_memory(1, 24, 224, processes=2, batch_key="data.eval_batch_size", shm=tmp_path)


def test_a_shared_memory_too_small_for_the_loaders_stops_before_the_model_is_built(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _shm_of(monkeypatch, 64 * 2**20)  # Docker's default
    root = _image_folder(tmp_path / "data", train=6)
    cfg = tiny_cfg("data=imagefolder", f"data.root={root}", "data.num_classes=3", "data.num_workers=2", "res=224",
                   "data.batch_size=4")  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr("vit_exp.build.build_model", lambda *a: pytest.fail("the model was built"))
        with pytest.raises(ConfigError, match=r"num_workers=2 with data.eval_batch_size=256 at 224 px keeps 184 MB"):
            run.train(cfg)
    assert not (tmp_path / "run").exists()  # nothing written
    assert run.train(_folder_cfg(tiny_cfg, root, "res=224", "data.batch_size=4")).top1 is not None  # no workers


def test_folder_mistakes_arrive_as_config_errors_not_wrapped_by_hydra(tiny_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.root=.*nowhere does not exist; point data.root at"):
        run.train(_folder_cfg(tiny_cfg, tmp_path / "nowhere"))
    loose = _image_folder(tmp_path / "loose", train=6, loose=True)
    with pytest.raises(ConfigError) as error:
        run.train(_folder_cfg(tiny_cfg, loose))
    assert "holds 6 images directly, not in class folders" in str(error.value)
    assert "full_key" not in str(error.value) and "Error in call to target" not in str(error.value)


def test_a_run_that_took_no_optimizer_step_fails(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="the run took 0 optimizer steps"):
        run.train(tiny_cfg("++trainer.limit_train_batches=0"))
    check_trained(1)  # fast_dev_run takes one step


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_a_resumed_run_with_nothing_left_reports_the_trained_model(tiny_cfg, tmp_path: Path) -> None:
    """Its fit has nothing to do, but the model it tests is trained: the figures are the checkpoint's."""
    first = run.train(tiny_cfg(run_dir=tmp_path / "a"))
    again = run.train(tiny_cfg(f"ckpt_path={first.last_checkpoint}", run_dir=tmp_path / "b"))
    assert again.steps == first.steps == 3 and again.top1 is not None


def test_checkpoints_hold_plain_containers_only(tiny_cfg, tmp_path: Path) -> None:
    """AdamW got Hydra's ListConfig betas; on torch 2.9 the checkpoint then failed torch.load(weights_only=True)."""
    cfg = tiny_cfg()
    module = build_module(cfg, torch.nn.Linear(2, 2), _FakeData(), lr=1e-3)
    betas = module.optimizer_factory.keywords["betas"]
    assert not isinstance(betas, ListConfig) and [type(b) for b in betas] == [float, float]
    assert not any(OmegaConf.is_config(v) for v in module.optimizer_factory.keywords.values())
    results = run.train(cfg)
    saved = torch.load(results.last_checkpoint, weights_only=True)
    assert [type(b) for b in saved["optimizer_states"][0]["param_groups"][0]["betas"]] == [float, float]


def test_the_schedule_is_called_without_hydras_per_call_policy_check(tiny_cfg) -> None:
    """Hydra's ``_partial_`` wrapper re-validates its target policy at every call (0.3 ms of the default run's
    ~30 ms step): the module gets the plain partial, giving the same values."""
    cfg = tiny_cfg()
    module = build_module(cfg, torch.nn.Linear(2, 2), _FakeData(), lr=1e-3)
    wrapped = instantiate(cfg.sched)
    assert type(wrapped) is not functools.partial and type(module.schedule) is functools.partial
    assert [module.schedule(s, total_steps=50) for s in range(60)] == [wrapped(s, total_steps=50) for s in range(60)]


class _FakeData:
    num_classes, multi_label = 10, False
    source = type("S", (), {"class_names": None})()


def test_eval_restores_the_preprocessing_of_the_training_run(tmp_path: Path) -> None:
    stored = OmegaConf.to_container(
        compose("train", ["data.crop_pct=0.5", "data.mean=[0.1,0.2,0.3]"], tmp_path), resolve=True
    )
    cfg = compose("eval", ["ckpt_path=x.ckpt"], tmp_path)  # digits.yaml: crop_pct 1.0, mean null
    restore_training_run(cfg, stored, typed=set())
    assert cfg.data.crop_pct == 0.5 and list(cfg.data.mean) == [0.1, 0.2, 0.3] and cfg.data.std is None
    assert cfg.model.name == stored["model"]["name"] and cfg.model.pretrained is None
    cfg = compose("eval", ["ckpt_path=x.ckpt", "data.crop_pct=0.8"], tmp_path)
    restore_training_run(cfg, stored, typed={"data.crop_pct"})  # what the user typed wins
    assert cfg.data.crop_pct == 0.8 and list(cfg.data.mean) == [0.1, 0.2, 0.3]


def test_typed_keys_are_the_command_line_overrides(tmp_path: Path) -> None:
    assert typed_keys() == set()  # outside a Hydra job
    hydra_cfg = compose("eval", ["ckpt_path=x.ckpt", "++data.crop_pct=0.8"], tmp_path, return_hydra_config=True)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        assert {"ckpt_path", "data.crop_pct"} <= typed_keys() and "++data.crop_pct" not in typed_keys()
    finally:
        HydraConfig.instance().cfg = None


def test_eval_of_a_run_uses_its_preprocessing(tiny_cfg, tmp_path: Path) -> None:
    trained = run.train(tiny_cfg("data.mean=[0.9,0.9,0.9]", "data.std=[0.05,0.05,0.05]", run_dir=tmp_path / "t"))
    evaluated = run.evaluate(tiny_cfg(f"ckpt_path={trained.checkpoint}", config_name="eval", run_dir=tmp_path / "e"))
    assert evaluated.top1 == pytest.approx(trained.top1) and evaluated.top5 == pytest.approx(trained.top5)


def test_the_value_rules_answer_without_importing_torch() -> None:
    """A mistyped value is answered before torch loads (about 1.5 s): the rules' tables import no heavy module."""
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from vit_exp.rules import check_values\n"
        "from vit_exp.errors import ConfigError\n"
        "try:\n"
        "    check_values(OmegaConf.create({'distill': {'kind': 'warm'}}))\n"
        "except ConfigError as error:\n"
        "    assert 'distill.kind=warm is not one of soft, hard' in str(error), error\n"
        "assert 'torch' not in sys.modules, 'the value rules imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
