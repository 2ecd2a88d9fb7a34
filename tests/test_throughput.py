"""``Throughput``: the whole fit's images/s, and after the first steps the steady rate and the shares of the time
between steps, on the host's clock and (CUDA events, read without waiting) on the device's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vit_exp.callbacks import throughput as throughput_module
from vit_exp.callbacks.throughput import Throughput


class Clocks:
    """The host's clock (``time.perf_counter``) and the device's (what a CUDA event records), moved by the test."""

    host = 0.0
    device = 0.0
    passed = float("inf")  # events recorded at device times up to this one have completed


class FakeEvent:
    """``torch.cuda.Event(enable_timing=True)`` on ``Clocks``' device clock."""

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.at: float | None = None

    def record(self) -> None:
        self.at = Clocks.device

    def query(self) -> bool:
        return self.at <= Clocks.passed

    def synchronize(self) -> None:
        Clocks.passed = max(Clocks.passed, self.at)

    def elapsed_time(self, end: FakeEvent) -> float:  # milliseconds, as CUDA's
        assert self.query() and end.query(), "elapsed_time of an event that has not completed: a wait"
        return (end.at - self.at) * 1e3


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> type[Clocks]:
    Clocks.host = Clocks.device = 0.0
    Clocks.passed = float("inf")
    monkeypatch.setattr(throughput_module.time, "perf_counter", lambda: Clocks.host)
    monkeypatch.setattr(throughput_module.torch.cuda, "Event", FakeEvent)
    return Clocks


def _fit(cb: Throughput, device: str, total_steps: int = 100) -> tuple[SimpleNamespace, SimpleNamespace]:
    trainer = SimpleNamespace(world_size=1, estimated_stepping_batches=total_steps)
    module = SimpleNamespace(device=torch.device(device))
    cb.on_fit_start(trainer, module)
    cb.on_train_epoch_start(trainer, module)
    return trainer, module


def _batch(cb: Throughput, trainer, module, wait: float, step: float, device_gap: float = 0.0, images: int = 8) -> None:
    """A batch that the host waited ``wait`` s for and whose step took ``step`` s; the device was between steps for
    ``device_gap`` s of the batch."""
    Clocks.host += wait
    Clocks.device += device_gap
    cb.on_train_batch_start(trainer, module, None, 0)
    Clocks.host += step
    Clocks.device += wait + step - device_gap
    cb.on_train_batch_end(trainer, module, None, (torch.zeros(images, 1),), 0)


def test_the_steady_figures_leave_out_the_first_steps_and_the_validation(clocks) -> None:
    cb = Throughput(warmup_steps=2)
    trainer, module = _fit(cb, "cpu")
    _batch(cb, trainer, module, wait=1.0, step=30.0)  # the compile
    _batch(cb, trainer, module, wait=1.0, step=3.0)
    for _ in range(4):
        _batch(cb, trainer, module, wait=1.0, step=3.0)
    Clocks.host += 100.0  # a validation
    cb.on_validation_end(trainer, module)
    for _ in range(3):
        _batch(cb, trainer, module, wait=1.0, step=3.0)
    # steady: batches 3-6 and 7-9, each run's first batch the reference: 3 + 2 intervals of 4 s, 1 s of them waiting
    assert cb.images_per_s_steady == pytest.approx(8 / 4.0)
    assert cb.input_wait_share == pytest.approx(0.25)
    assert cb.device_gap_share is None  # a CPU run: no events
    # the whole fit: 9 batches, the compile's included, the validation not (its first interval starts at the fit's)
    assert cb.images_per_s == pytest.approx(9 * 8 / (31 + 8 * 4 + 0))


def test_a_short_fit_warms_up_for_a_quarter_of_its_steps(clocks) -> None:
    cb = Throughput(warmup_steps=10)
    trainer, module = _fit(cb, "cpu", total_steps=8)
    for step in (30.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0):
        _batch(cb, trainer, module, wait=0.0, step=step)
    assert cb.images_per_s_steady == pytest.approx(8 / 3.0)  # batches 3-8: the compile and batch 2 left out


def test_device_share_is_read_from_events_without_waiting_for_them(clocks) -> None:
    """On a GPU the host runs ahead: events not yet passed are left for later, never waited on during the fit;
    the figure reads them all once the fit has ended."""
    cb = Throughput(warmup_steps=1)
    trainer, module = _fit(cb, "cuda")
    _batch(cb, trainer, module, wait=0.5, step=3.0, device_gap=0.5)
    for _ in range(4):  # the device keeps up: each batch's events have passed when the next one's are recorded
        _batch(cb, trainer, module, wait=0.5, step=3.0, device_gap=0.1)
    assert len(cb._events) == 0
    clocks.passed = clocks.device  # then it falls behind: nothing more completes, and reading must not wait
    for _ in range(4):
        _batch(cb, trainer, module, wait=0.5, step=3.0, device_gap=0.1)
    assert len(cb._events) >= 4  # recorded, not read
    cb.on_train_end(trainer, module)
    # batches 2-9 steady, batch 2 the reference: 7 intervals of 3.5 s on either clock, 0.1 s of each on the device
    assert cb.device_gap_share == pytest.approx(0.1 / 3.5)
    assert cb.input_wait_share == pytest.approx(0.5 / 3.5)
