"""W&B decides online/offline from the key, so that a run without one neither hangs nor fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_exp.tracking import has_wandb_key, wandb_logger


def _offline(logger: object) -> bool:
    """Whether the W&B run this logger starts is offline."""
    return logger._offline


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
    assert _offline(wandb_logger(project="p", save_dir=str(no_credentials)))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not _offline(wandb_logger(project="p", save_dir=str(no_credentials)))


def test_wandb_mode_is_obeyed(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _offline(wandb_logger(project="p", save_dir=str(no_credentials)))
    assert _offline(wandb_logger(project="p", save_dir=str(no_credentials), offline=True))


def test_offline_is_the_loggers_not_the_process(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offline run leaves WANDB_MODE alone: the next job of a sweep, with a key, logs online."""
    import os

    logger = wandb_logger(project="p", save_dir=str(no_credentials), init_timeout=60)
    assert "WANDB_MODE" not in os.environ
    run = logger.experiment  # starts the run (offline: no network)
    try:
        assert run.settings.mode in ("offline", "dryrun") and "WANDB_MODE" not in os.environ
        assert list((no_credentials / "wandb").glob("offline-run-*"))
    finally:
        run.finish()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not _offline(wandb_logger(project="p", save_dir=str(no_credentials)))


def test_checkpoint_upload_needs_an_online_run(no_credentials: Path) -> None:
    from vit_exp.errors import ConfigError

    with pytest.raises(ConfigError, match="log_model=True uploads checkpoints.*logger.wandb.log_model=false"):
        wandb_logger(project="p", save_dir=str(no_credentials), log_model=True)
