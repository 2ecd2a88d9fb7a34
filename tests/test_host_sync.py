"""No training step asks the device for a value unless Lightning logs at that step (issue 13, STYLE habit 12)."""

from __future__ import annotations

import pytest
import torch

from tests.sync_counter import HostReads
from vit_exp import run

MARKER = "+callbacks.step_reads._target_=tests.sync_counter.StepMarker"


CUDA = pytest.param(
    "gpu",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
)


@pytest.mark.filterwarnings("ignore:The number of training batches")
@pytest.mark.parametrize("hw", ["cpu", CUDA])
def test_no_host_read_outside_logging_steps(tiny_cfg, hw: str) -> None:
    """20 steps of vit_test through Lightning with the default callbacks (NaN guard, preemption, exact resume,
    throughput, learning-rate monitor, checkpoints), logging every 10 steps, with the fused AdamW of a GPU run
    (on the CPU the default is not fused, and the NaN guard reads its flag: free on a CPU, see nan_guard). On a
    CUDA GPU (``-m gpu``) the same run with ``hw=gpu``, where the copies between host and device are real."""
    cfg = tiny_cfg(
        MARKER, "+optim.fused=true", "trainer.max_epochs=2", "++trainer.limit_train_batches=10",
        "trainer.log_every_n_steps=10", "data.num_workers=1", f"hw={hw}",
    )  # fmt: skip
    with HostReads() as reads:
        results = run.train(cfg)
    if hw == "gpu":  # the device's share between steps, from CUDA events read without a wait
        assert results.device_gap_share is not None and 0 <= results.device_gap_share < 1
    assert reads.logging_steps == {9, 19}
    assert reads.steps == set(range(20))
    assert reads.outside_logging_steps() == {}
