"""W&B decides online/offline from the key, so that a run without one neither hangs nor fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_exp.tracking import has_wandb_key, wandb_logger


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_key_from_env_or_netrc(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not has_wandb_key()
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (no_credentials / ".netrc").chmod(0o600)
    assert has_wandb_key()
    (no_credentials / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_key()


def test_offline_without_key_online_with_one(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Constructing the logger starts nothing: W&B is initialised on first use.
    assert wandb_logger(project="p", save_dir=str(no_credentials))._offline is True
    monkeypatch.delenv("WANDB_MODE")  # the offline logger sets it for the W&B service process
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logger(project="p", save_dir=str(no_credentials))._offline is False


def test_wandb_mode_is_obeyed(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_logger(project="p", save_dir=str(no_credentials))._offline is True
    assert wandb_logger(project="p", save_dir=str(no_credentials), offline=True)._offline is True
