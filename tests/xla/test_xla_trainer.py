"""``hw=tpu`` up to the launch, in this process: the strategy by device count, bf16 without ``XLA_USE_BF16``, the
graph cuts in evaluation, and the checks that stop an impossible XLA run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import compose
from tests.xla.conftest import XLA
from vit_exp.checks import check_hardware
from vit_exp.compat import xla_cpu_devices
from vit_exp.errors import HardwareError

pytestmark = XLA


@pytest.mark.parametrize(("devices", "strategy"), [(1, "SingleDeviceXLAStrategy"), (8, "ResumableXLAStrategy")])
def test_the_strategy_follows_the_device_count(devices: int, strategy: str, tmp_path: Path) -> None:
    from vit_exp.callbacks.xla import XLAGraphCuts
    from vit_exp.xla import AtomicXLACheckpointIO, XLABf16Precision

    cfg = compose("train", ["hw=tpu", f"trainer.devices={devices}"], tmp_path)
    with xla_cpu_devices(devices):
        check_hardware(cfg.trainer)
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    assert type(trainer.strategy).__name__ == strategy
    assert isinstance(trainer.precision_plugin, XLABf16Precision) and trainer.precision_plugin.precision == "bf16-true"
    assert "XLA_USE_BF16" not in os.environ  # deprecated: it made every float on the device bf16, metric sums too
    assert any(isinstance(c, XLAGraphCuts) for c in trainer.callbacks)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicXLACheckpointIO)
    pickle.dumps(trainer.callbacks)  # torch_xla's multiprocess launch hands them to every device's process


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.devices=4"], "trainer.devices=4: XLA runs on one device or on all 8"),
        (["trainer.devices=1", "trainer.strategy=xla"], "set trainer.strategy=auto"),
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed does not run on XLA"),
    ],
)
def test_impossible_xla_settings_are_named(overrides: list[str], message: str, tmp_path: Path) -> None:
    cfg = compose("train", ["hw=tpu", *overrides], tmp_path)
    with xla_cpu_devices(8), pytest.raises(HardwareError, match=message):
        check_hardware(cfg.trainer)


def test_the_device_count_patch_is_undone() -> None:
    from lightning.fabric.accelerators.xla import XLAAccelerator

    # (Not called: on a machine without a TPU the real count asks the GCE metadata server.)
    before = {name: XLAAccelerator.__dict__[name] for name in ("auto_device_count", "is_available")}
    with xla_cpu_devices(8):
        assert XLAAccelerator.auto_device_count() == 8 and XLAAccelerator.is_available()
    assert {name: XLAAccelerator.__dict__[name] for name in before} == before


def test_an_xla_checkpoint_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch_xla

    from vit_exp.xla import AtomicXLACheckpointIO

    path, io = tmp_path / "last.ckpt", AtomicXLACheckpointIO()
    io.save_checkpoint({"w": torch.ones(3, device=torch_xla.device())}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3)) and torch.load(path)["w"].device.type == "cpu"

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"w": torch.zeros(3, device=torch_xla.device())}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.ones(3))  # the previous checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_several_devices_resume_from_the_batches_trained_on_not_those_prefetched() -> None:
    """``ResumableXLAStrategy``'s loader (torch_xla's ``MpDeviceLoader``, background threads reading ahead) saves the
    position of the batches handed to the step; on one XLA CPU device, as each of 8 processes would."""
    import torch
    import torch_xla
    from torch.utils.data import TensorDataset

    from vit_exp.data.order import resumable_loader
    from vit_exp.xla import ResumableXLAStrategy

    class _Strategy(ResumableXLAStrategy):
        root_device = torch_xla.device()

    def loader() -> object:
        data = TensorDataset(torch.arange(40.0).view(40, 1), torch.arange(40))
        return _Strategy().process_dataloader(resumable_loader(data, batch_size=4, seed=0))

    straight = [y.cpu().tolist() for _, y in loader()]
    first = loader()
    taken = []
    for _, y in first:
        taken.append(y.cpu().tolist())
        if len(taken) == 3:
            break
    state = first.state_dict()
    assert state["batches"] == 3 and first._loader._position > 3  # the threads had read ahead of the step
    resumed = loader()
    resumed.load_state_dict(state)
    assert taken + [y.cpu().tolist() for _, y in resumed] == straight
