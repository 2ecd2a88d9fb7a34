"""The EMA of the weights (``vit_exp.callbacks.EMA``, ``callbacks.ema``): its arithmetic against timm's
``ModelEmaV3`` and by hand, validation and the test on the EMA, checkpoints that hold both weights and the readers
that choose between them, the config switch and its checks, DDP ranks that agree, FSDP refused, and exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import compose
from vit_exp.build import build_trainer
from vit_exp.callbacks import EMA
from vit_exp.checkpoints import load_weights
from vit_exp.checks import check_values, validate
from vit_exp.errors import ConfigError
from vit_exp.models import create_model
from vit_exp.module import ViTModule

CLASSES = 4


def _module(seed: int = 0) -> ViTModule:
    from functools import partial

    torch.manual_seed(seed)
    backbone = create_model("vit_test", img_size=16, patch_size=4, num_classes=CLASSES)
    return ViTModule(backbone, num_classes=CLASSES, optimizer=partial(torch.optim.AdamW, lr=3e-3))


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (32,), generator=g))
    return DataLoader(data, batch_size=8)  # 4 steps an epoch, the same batches every epoch


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}
    options = {"max_epochs": 2, "limit_val_batches": 1, "enable_checkpointing": False, **quiet, **kwargs}
    return pl.Trainer(accelerator="cpu", devices=1, callbacks=callbacks, default_root_dir=tmp_path, **options)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class Record(pl.Callback):
    """The module's weights after every optimizer step, at every validation batch and every test batch, and at the
    end of training (before the callbacks after this one in the list act)."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []
        self.validated: list[list[torch.Tensor]] = []
        self.tested: list[list[torch.Tensor]] = []
        self.trained: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.steps.append(_weights(pl_module))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.validated.append(_weights(pl_module))

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.tested.append(_weights(pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.trained = _weights(pl_module)


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("warmup", [True, False])
def test_the_ema_after_n_steps_is_the_hand_computed_ema_and_timms(tmp_path: Path, warmup: bool) -> None:
    from timm.utils.model_ema import ModelEmaV3

    decay, power = 0.6, 0.75  # with warm-up, the decay reaches the cap 0.6 at the fourth update
    module, record = _module(), Record()
    assert list(module.state_dict()) == [name for name, _ in module.named_parameters()]  # timm averages state_dict
    timm_ema = ModelEmaV3(module, decay=decay, use_warmup=warmup, warmup_power=power)
    ema = EMA(decay=decay, warmup=warmup, warmup_power=power)
    trainer = _trainer(tmp_path, [record, ema], max_epochs=-1, max_steps=6, limit_val_batches=0)
    trainer.fit(module, _loader())

    hand = None
    for n, weights in enumerate(record.steps, start=1):
        timm_ema.update(SimpleNamespace(state_dict=lambda w=weights: dict(zip(module.state_dict(), w))), step=n)
        d = 0.0 if n == 1 else min(decay, 1 - n**-power) if warmup else decay  # 1 - (1 + (n - 1)) ** -power
        hand = weights if hand is None else [d * e + (1 - d) * w for e, w in zip(hand, weights)]
    assert len(record.steps) == 6 and int(ema.average.n_averaged) == 6
    ours = _weights(ema.average.module)
    assert _equal(ours, _weights(timm_ema.module))  # the same lerp, bit for bit
    assert all(torch.allclose(o, h, atol=1e-6) for o, h in zip(ours, hand))
    assert not torch.allclose(ours[0], record.steps[-1][0])  # an average, not the last weights
    assert _equal(_weights(module), ours)  # training ends with the EMA in the model (Lightning's on_train_end)


def test_validation_and_the_best_checkpoint_see_the_ema_while_training_goes_on_untouched(tmp_path: Path) -> None:
    plain, with_ema = Record(), Record()
    _trainer(tmp_path / "plain", [plain]).fit(_module(), _loader(), _loader())
    ema, best = EMA(decay=0.9), ModelCheckpoint(tmp_path / "ckpt", filename="best", monitor="val/top1", mode="max")
    module = _module()
    trainer = _trainer(tmp_path / "ema", [with_ema, ema, best], enable_checkpointing=True)
    trainer.fit(module, _loader(), _loader())

    assert _equal(with_ema.trained, plain.trained)  # the EMA does not change the trained weights
    assert len(with_ema.validated) == 2 and not _equal(with_ema.validated[-1], with_ema.trained)
    assert _equal(with_ema.validated[-1], _weights(ema.average.module))  # the last validation saw the final EMA
    assert _equal(plain.validated[-1], plain.trained)

    saved = torch.load(best.best_model_path, weights_only=True)
    ema_weights = [v for k, v in saved["state_dict"].items() if k.startswith("model.")]
    trained = [v for k, v in saved["current_model_state"].items() if k.startswith("model.")]
    epoch = saved["epoch"]
    assert _equal(ema_weights, with_ema.validated[epoch]) and _equal(trained, with_ema.steps[4 * epoch + 3])

    # The test after fit on the same Trainer (as run.train does) evaluates the best checkpoint's EMA.
    trainer.test(module, _loader(), ckpt_path=best.best_model_path, verbose=False)
    assert _equal(with_ema.tested[0], ema_weights)

    # eval.py and predict.py read the EMA (use_ema=true), or the trained weights.
    backbone = create_model("vit_test", img_size=16, patch_size=4, num_classes=CLASSES)
    load_weights(backbone, best.best_model_path)
    assert _equal(_weights(backbone), ema_weights)
    load_weights(backbone, best.best_model_path, use_ema=False)
    assert _equal(_weights(backbone), trained)


def test_a_checkpoint_without_ema_loads_the_same_weights_whatever_use_ema_says(tmp_path: Path) -> None:
    best = ModelCheckpoint(tmp_path, filename="plain", monitor="val/top1", mode="max")
    module = _module()
    _trainer(tmp_path, [best], enable_checkpointing=True, max_epochs=1).fit(module, _loader(), _loader())
    backbone = create_model("vit_test", img_size=16, patch_size=4, num_classes=CLASSES)
    for use_ema in (True, False):
        load_weights(backbone, best.best_model_path, use_ema=use_ema)
        assert _equal(_weights(backbone), _weights(module.model))


def test_ema_is_off_by_default_and_one_key_turns_it_on(tmp_path: Path) -> None:
    def callbacks(*overrides: str) -> list[pl.Callback]:
        return build_trainer(compose("train", list(overrides), tmp_path), []).callbacks

    assert not any(isinstance(c, EMA) for c in callbacks())
    for overrides in (["callbacks.ema.decay=0.9998"], ["callbacks=insight", "callbacks.ema.decay=0.9998"]):
        (ema,) = [c for c in callbacks(*overrides, "callbacks.ema.warmup_power=0.5") if isinstance(c, EMA)]
        assert (ema.decay, ema.warmup, ema.warmup_power) == (0.9998, True, 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["callbacks.ema.decay=1.5"], "callbacks.ema.decay=1.5 is not a number in (0, 1) (or null: no EMA)"),
        (["callbacks.ema.decay=0"], "callbacks.ema.decay=0 is not a number in (0, 1)"),
        (["callbacks.ema.decay=0.999", "callbacks.ema.warmup_power=-1"], "callbacks.ema.warmup_power=-1 is not"),
        (["callbacks.ema.warmup=sometimes"], "callbacks.ema.warmup=sometimes is not true or false"),
        (["callbacks.ema.decay=0.999", "hw=fsdp"], "callbacks.ema.decay=0.999 averages a whole copy of the model"),
    ],
)
def test_ema_settings_are_checked_before_anything_is_built(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate(compose("train", overrides, Path("/tmp/unused")))
    assert message in str(error.value)


def test_use_ema_is_checked_for_eval_and_predict() -> None:
    for name in ("eval", "predict"):
        with pytest.raises(ConfigError, match=r"use_ema=maybe is not true or false"):
            check_values(compose(name, ["use_ema=maybe"]))


def test_an_fsdp_trainer_is_refused_at_setup_with_what_to_use() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ConfigError, match=r"cannot average a sharded model \(FSDPStrategy\).*hw=ddp"):
        EMA().setup(SimpleNamespace(strategy=FSDPStrategy()), _module(), "fit")


def test_the_update_reads_nothing_back_from_the_device_where_lightnings_would() -> None:
    from torch.optim.swa_utils import AveragedModel

    from tests.sync_counter import HostReads

    module, ema = _module(), EMA(decay=0.9)
    ema.setup(SimpleNamespace(strategy=None), module, "fit")
    with HostReads() as ours:
        for step in (1, 2, 3):
            ema.on_train_batch_end(SimpleNamespace(global_step=step), module, None, None, 0)
    lightnings = AveragedModel(module, use_buffers=True)  # what EMAWeightAveraging updates through
    with HostReads() as theirs:
        lightnings.update_parameters(module)
    assert int(ema.average.n_averaged) == 3 and not ours.by_step
    assert theirs.by_step[None]  # it asks on the host whether its counter is 0


def test_resuming_an_ema_checkpoint_without_the_ema_is_refused_with_the_decay_to_give(tmp_path: Path) -> None:
    from vit_exp.checkpoints import resume_path

    weights = {"model.w": torch.zeros(1)}
    config = {"callbacks": {"ema": {"decay": 0.999}}}
    torch.save({"state_dict": weights, "current_model_state": weights, "hyper_parameters": {"config": config}},
               tmp_path / "last.ckpt")  # fmt: skip
    ckpt = f"ckpt_path={tmp_path / 'last.ckpt'}"
    with pytest.raises(ConfigError, match=r"resume with callbacks.ema.decay=0.999, or .* model.pretrained="):
        resume_path(compose("train", [ckpt], tmp_path))
    assert resume_path(compose("train", [ckpt, "callbacks.ema.decay=0.999"], tmp_path)) == str(tmp_path / "last.ckpt")


# ---- runs of train.py: DDP ranks, kill -9 and resume ----------------------------------------------------------


class SaveEMAPerRank(pl.Callback):
    """Test only (``+callbacks.z._target_=tests.test_ema.SaveEMAPerRank +callbacks.z.dir=D``): each rank saves the
    EMA callback's average at the end of training to ``D/rank<N>.pt``."""

    def __init__(self, dir: str) -> None:
        self.dir = Path(dir)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        (ema,) = [c for c in trainer.callbacks if isinstance(c, EMA)]
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.save(ema.average.state_dict(), self.dir / f"rank{trainer.global_rank}.pt")


def test_under_ddp_both_ranks_hold_the_same_ema_and_the_checkpoint_has_it(tmp_path: Path) -> None:
    from tests.scale.conftest import QUICK, train_cli

    out = train_cli([*QUICK, "hw=ddp_sim", "callbacks.ema.decay=0.99", "hydra.run.dir=ddp",
                     "+callbacks.z._target_=tests.test_ema.SaveEMAPerRank", f"+callbacks.z.dir={tmp_path / 'ema'}"],
                    tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ema" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    last = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    keys = [k for k in ranks[0] if k.startswith("module.model.")]
    assert keys and all(torch.equal(ranks[0][k], ranks[1][k]) for k in keys)
    assert int(ranks[0]["n_averaged"]) == int(ranks[1]["n_averaged"]) == 10  # debug=limit: 2 epochs of 5 steps
    assert all(torch.equal(ranks[0][k], last["state_dict"][k.removeprefix("module.")]) for k in keys)
    assert any(not torch.equal(last["state_dict"][k], last["current_model_state"][k]) for k in last["state_dict"])


@pytest.mark.slow
def test_killed_mid_epoch_then_resumed_the_ema_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from tests.scale.test_exact_resume import RUN, STEPS_PER_EPOCH, _tensors, train_killed_then_resumed

    cut, reference = train_killed_then_resumed([*RUN, "callbacks.ema.decay=0.999"], tmp_path)
    ours, theirs = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False) for d in (cut, reference))
    parts = ("state_dict", "current_model_state", "averaging_state", "optimizer_states")
    a, b = (_tensors({k: c[k] for k in parts}) for c in (ours, theirs))
    assert a.keys() == b.keys() and any(k.startswith("/current_model_state") for k in a)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    assert int(ours["averaging_state"]["n_averaged"]) == 3 * STEPS_PER_EPOCH
    results = [json.loads((d / "results.json").read_text()) for d in (cut, reference)]
    assert all(results[0][k] == results[1][k] for k in ("top1", "best_val_top1", "steps"))
