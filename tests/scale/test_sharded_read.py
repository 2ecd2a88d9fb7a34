"""Sharded (FSDP) checkpoint directories, as torch.distributed.checkpoint writes them, read in one CPU process
without a process group, and safely: entries that are no tensors, and an index that holds more, are not unpickled."""

from __future__ import annotations

import warnings

import pytest
import torch

from vit_exp.checkpoints import load_weights
from vit_exp.models import create_model


def _loaded(model: torch.nn.Module, path) -> torch.nn.Module:
    load_weights(model, path)
    return model.eval()


# --- sharded checkpoints: torch.distributed.checkpoint directories, as FSDP's sharded saves write them ---------------

UNPICKLED = []


def _record_unpickling() -> str:
    UNPICKLED.append(True)
    return "ran"


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (_record_unpickling, ())


def _save_dcp(state: dict, path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process, as intended
        dcp.save(state, checkpoint_id=path, no_dist=True)


def test_sharded_checkpoint_directories_load_on_one_cpu(tmp_path):
    torch.manual_seed(0)
    ref = create_model("vit_test", img_size=32, num_classes=10).eval()
    # Lightning's layout: the LightningModule's state (backbone under `model.`) under "model", optimizers beside it.
    state = {
        "model": {f"model.{k}": v for k, v in ref.state_dict().items()} | {"model.note": _RunsCodeWhenUnpickled()},
        "optimizer_0": {"param_groups": [{"lr": 0.1, "note": _RunsCodeWhenUnpickled()}]},
    }
    _save_dcp(state, tmp_path / "last.ckpt")
    ours = _loaded(create_model("vit_test", img_size=32, num_classes=10), tmp_path / "last.ckpt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)
    assert not UNPICKLED  # entries that are no tensors are not read: DCP would unpickle them unsafely


def test_a_directory_that_is_no_sharded_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="not a sharded checkpoint.*such as checkpoints/last.ckpt"):
        load_weights(create_model("vit_test"), tmp_path / "run")
    _save_dcp({"optimizer_0": {"step": torch.zeros(1)}}, tmp_path / "no_model")
    with pytest.raises(ValueError, match="no tensors under 'model' \\(its entries: optimizer_0\\)"):
        load_weights(create_model("vit_test"), tmp_path / "no_model")


def test_an_index_that_holds_more_than_an_index_is_not_unpickled(tmp_path):
    import pickle

    _save_dcp({"model": create_model("vit_test").state_dict()}, tmp_path / "ckpt")
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled()))
    with pytest.raises(ValueError, match="refers to tests.scale.test_sharded_read._record_unpickling"):
        load_weights(create_model("vit_test"), tmp_path / "ckpt")
    assert not UNPICKLED
    (tmp_path / "ckpt" / ".metadata").write_bytes(b"half an ind")
    with pytest.raises(ValueError, match=r"\.metadata is not a torch.distributed.checkpoint index"):
        load_weights(create_model("vit_test"), tmp_path / "ckpt")
