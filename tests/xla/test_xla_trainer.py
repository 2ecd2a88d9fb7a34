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


@pytest.mark.parametrize(("devices", "strategy"), [(1, "SingleDeviceXLAStrategy"), (8, "XLAStrategy")])
def test_the_strategy_follows_the_device_count(devices: int, strategy: str, tmp_path: Path) -> None:
    from vit_exp.callbacks.xla import XLAGraphCuts
    from vit_exp.xla import XLABf16Precision

    cfg = compose("train", ["hw=tpu", f"trainer.devices={devices}"], tmp_path)
    with xla_cpu_devices(devices):
        check_hardware(cfg.trainer)
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    assert type(trainer.strategy).__name__ == strategy
    assert isinstance(trainer.precision_plugin, XLABf16Precision) and trainer.precision_plugin.precision == "bf16-true"
    assert "XLA_USE_BF16" not in os.environ  # deprecated: it made every float on the device bf16, metric sums too
    assert any(isinstance(c, XLAGraphCuts) for c in trainer.callbacks)
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
