"""Hardware profiles compose to what they promise; a machine without the hardware says what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy

from tests.conftest import compose
from vit_exp.checkpoints.atomic import AtomicCheckpointIO
from vit_exp.checks import check_hardware
from vit_exp.errors import HardwareError
from vit_exp.models.layers import Block


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
        ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}),
        ("ddp", {"accelerator": "gpu", "devices": -1, "strategy": "ddp", "precision": "bf16-mixed"}),
        (
            "tpu",
            {
                "accelerator": "tpu",
                "devices": 8,
                "strategy": "auto",
                "precision": "bf16-true",
                "enable_progress_bar": False,
                "plugins": None,
            },
        ),
        ("ddp_sim", {"accelerator": "cpu", "devices": 2, "precision": "32-true"}),
        ("multinode", {"accelerator": "gpu", "strategy": "ddp", "devices": 1, "num_nodes": 1}),
    ],
)
def test_profiles_set_what_they_promise(profile: str, expected: dict, tmp_path: Path) -> None:
    trainer = compose("train", [f"hw={profile}"], tmp_path).trainer
    assert {k: trainer[k] for k in expected} == expected


def test_multinode_takes_its_sizes_from_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_NNODES", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    trainer = compose("train", ["hw=multinode"], tmp_path).trainer
    assert (trainer.num_nodes, trainer.devices) == (4, 8)


def test_checkpoints_are_atomic_except_on_xla(tmp_path: Path) -> None:
    plugins = instantiate(compose("train", [], tmp_path).trainer.plugins)
    assert [type(p) for p in plugins] == [AtomicCheckpointIO]
    assert compose("train", ["hw=tpu"], tmp_path).trainer.plugins is None


def test_fsdp_shards_per_block_with_optional_activation_checkpointing(tmp_path: Path) -> None:
    plain = instantiate(compose("train", ["hw=fsdp"], tmp_path).trainer.strategy)
    assert isinstance(plain, FSDPStrategy) and plain._state_dict_type == "sharded"
    assert plain.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert not plain._activation_checkpointing_kwargs
    on = "trainer.strategy.activation_checkpointing_policy=${trainer.strategy.auto_wrap_policy}"
    checkpointed = instantiate(compose("train", ["hw=fsdp", on], tmp_path).trainer.strategy)
    assert checkpointed._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        (["hw=gpu"], "needs a CUDA GPU"),
        (["hw=ddp"], "needs a CUDA GPU"),
        (["hw=fsdp"], "needs a CUDA GPU"),
        (["hw=multinode"], "needs a CUDA GPU"),
        (["hw=ddp_sim", "trainer.num_nodes=2"], "srun python train.py hw=multinode"),
    ],
)
def test_missing_hardware_is_named(
    overrides: list[str], missing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SLURM_NTASKS", "MASTER_ADDR", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(HardwareError, match=missing):
        check_hardware(compose("train", overrides, tmp_path).trainer)


@pytest.mark.parametrize("devices", ["-1", "[0,1]", "'0,1'", "'3,'"])
def test_a_cpu_run_takes_a_number_of_processes_not_gpu_ids(devices: str, tmp_path: Path) -> None:
    """Lightning's CPU accelerator rejects these in the Trainer (a TypeError in Hydra's instantiate): here first."""
    trainer = compose("train", [f"trainer.devices={devices}"], tmp_path).trainer
    with pytest.raises(HardwareError, match=r"on the CPU, which takes a number of processes, not -1 or device ids; "
                       r"set trainer.devices=1 \(or auto\)"):  # fmt: skip
        check_hardware(trainer)


@pytest.mark.parametrize("devices", ["1", "2", "auto", "'2'"])
def test_a_cpu_process_count_passes(devices: str, tmp_path: Path) -> None:
    check_hardware(compose("train", [f"trainer.devices={devices}"], tmp_path).trainer)


@pytest.mark.parametrize(
    ("devices", "error"),
    [("[0,1]", None), ("'1,'", None), ("[0,3]", "names GPU 3"), ("'2,'", "names GPU 2"), ("3", "3 GPUs asked for")],
)
def test_gpu_ids_are_checked_against_the_visible_gpus(
    devices: str, error: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    trainer = compose("train", ["hw=gpu", f"trainer.devices={devices}"], tmp_path).trainer
    if error is None:
        check_hardware(trainer)
    else:
        with pytest.raises(HardwareError, match=error):
            check_hardware(trainer)
