"""Lightning's private names behind vit_exp.compat: patches undone after each job, one version check."""

from __future__ import annotations

import importlib

import pytest

from vit_exp import compat, run
from vit_exp.checkpoints import SHARDED_META
from vit_exp.launch import ddp_job

LAUNCHER = importlib.import_module(compat.LAUNCHER_MODULE)
HOOKS = ("_hydra_subprocess_cmd", "_launch_process_observer")


def _originals() -> dict[str, object]:
    return {name: getattr(LAUNCHER, name) for name in HOOKS}


class _Trainer:  # what ddp_job reads of a trainer that started no processes
    strategy = None


def test_ddp_job_replaces_the_launcher_functions_for_the_job_only() -> None:
    before = _originals()
    with ddp_job(_Trainer()):
        assert LAUNCHER._hydra_subprocess_cmd.__name__ == "child_command"
        assert LAUNCHER._launch_process_observer.__name__ == "start_for"
    assert _originals() == before
    with pytest.raises(RuntimeError, match="boom"), ddp_job(_Trainer()):
        raise RuntimeError("boom")
    assert _originals() == before  # a failed job too


def test_a_run_leaves_lightning_as_it_found_it(tiny_cfg) -> None:
    before = _originals()
    run.train(tiny_cfg())
    assert _originals() == before


def test_private_constants_agree_with_ours() -> None:
    assert compat.sharded_meta_filename() == SHARDED_META  # read without Lightning by vit_exp.checkpoints


def test_overridden_private_methods_exist_in_lightning() -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vit_exp.callbacks.best_checkpoint import BestCheckpoint

    assert callable(getattr(ModelCheckpoint, "_monitor_candidates", None))  # BestCheckpoint's override would be dead
    assert BestCheckpoint._monitor_candidates is not ModelCheckpoint._monitor_candidates


def test_a_version_outside_the_tested_range_is_warned_about(monkeypatch: pytest.MonkeyPatch) -> None:
    assert compat.check_versions() == []  # this environment is a tested one
    monkeypatch.setattr(compat, "TESTED", (("lightning", (2, 0), (2, 1)),))
    with pytest.warns(UserWarning, match=r"lightning .* is outside .*2\.0 <= lightning < 2\.1"):
        assert len(compat.check_versions.__wrapped__()) == 1
