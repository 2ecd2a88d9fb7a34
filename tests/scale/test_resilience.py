"""Atomic checkpoints, the resumable train order, resume=auto, the NaN guard and preemption (in process)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.scale.wandb_records import offline_runs
from vit_exp import run
from vit_exp.checkpoints import checkpoint_config, checkpoint_hparams, recover_interrupted_swap, resume_path
from vit_exp.checkpoints.atomic import AtomicCheckpointIO, AtomicFSDPStrategy
from vit_exp.checkpoints.sharded import load_distributed_checkpoint
from vit_exp.data.order import ResumableSampler, SeededSamples, resumable_loader
from vit_exp.errors import ConfigError, NonFiniteLossError, Preempted

HELPERS = "tests.scale.helpers"


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- atomic checkpoints ----------------------------------------------------------------------------------------------


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)

    def crash_mid_write(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"\x80\x02half a checkpoint")  # bytes reach the disk, then the process "dies"
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()

    saved = _ckpt(path)
    assert saved["global_step"] == 1 and torch.equal(saved["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    io.save_checkpoint({"global_step": 3}, path)  # and the next save replaces it
    assert _ckpt(path)["global_step"] == 3


def _writer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("checkpoint-writer")]


def test_a_background_save_writes_the_state_as_it_was_when_asked(tmp_path: Path) -> None:
    """The caller goes on while the writer works: what the file holds is the state at the save, not what the
    next step made of the tensors; a removal waits for the saves queued before it; a read waits for them all."""
    io = AtomicCheckpointIO(background=True)
    w = torch.ones(1000)
    kept, dropped = tmp_path / "last.ckpt", tmp_path / "epoch=0.ckpt"
    io.save_checkpoint({"global_step": 1, "w": w}, dropped)
    io.remove_checkpoint(dropped)  # queued after its own save: the file does not come back
    io.save_checkpoint({"global_step": 1, "w": w}, kept)
    w.add_(1)  # the next optimizer step, in place, while the writer may still be writing
    loaded = io.load_checkpoint(kept)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"] and _writer_threads()
    io.teardown()
    assert not _writer_threads()


def test_a_failed_background_save_raises_at_the_next_call_and_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO(background=True)
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.flush()

    def full_disk(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    io.save_checkpoint({"global_step": 2}, path)  # returns: the writer fails later
    with pytest.raises(OSError, match="No space left"):
        io.flush()
    monkeypatch.undo()
    assert _ckpt(path)["global_step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    io.save_checkpoint({"global_step": 3}, path)
    io.teardown()
    assert _ckpt(path)["global_step"] == 3


def test_a_run_with_background_saves_writes_what_a_run_without_them_writes(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.py with trainer.plugins.0.background=true: the writer thread does the saves, and the run gives the
    same figures and checkpoints holding the same weights and step as the synchronous writer's."""
    queued: dict[bool, list] = {False: [], True: []}
    submit = AtomicCheckpointIO._submit
    results = {}
    for background in (False, True):
        monkeypatch.setattr(AtomicCheckpointIO, "_submit",
                            lambda io, fn, *args, b=background: (queued[b].append(fn), submit(io, fn, *args)))  # fmt: skip
        cfg = tiny_cfg(f"trainer.plugins.0.background={str(background).lower()}", "trainer.max_epochs=2",
                       run_dir=tmp_path / str(background))  # fmt: skip
        results[background] = run.train(cfg)
    assert not queued[False] and queued[True]  # the override reached the writer
    for name in ("best.ckpt", "last.ckpt"):
        sync, background = (_ckpt(tmp_path / str(b) / "checkpoints" / name) for b in (False, True))
        assert sync["global_step"] == background["global_step"] > 0
        assert sync["state_dict"].keys() == background["state_dict"].keys()
        assert all(torch.equal(sync["state_dict"][k], background["state_dict"][k]) for k in sync["state_dict"])
    assert results[False].top1 == results[True].top1 and results[True].steps > 0
    assert not _writer_threads()


def test_the_trainer_writes_checkpoints_through_it(tiny_cfg) -> None:
    from hydra.utils import instantiate

    trainer = instantiate(tiny_cfg().trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- atomic sharded (FSDP) checkpoints: one process, no process group, as torch.distributed.checkpoint allows ---------


def _save_sharded(path: Path, step: int) -> None:
    """What Lightning hands the strategy at a save: the module's state, optimizer states, the rest (meta.pt)."""
    checkpoint = {
        "state_dict": {"model.pos_embed": torch.full((2, 3), float(step))},
        "optimizer_states": [],
        "global_step": step,
        "hyper_parameters": {"config": {"model": {"name": "vit_test"}}},
    }
    AtomicFSDPStrategy(state_dict_type="sharded").save_checkpoint(checkpoint, path)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def _step(path: Path) -> int:
    weights = load_distributed_checkpoint(path)["model.pos_embed"]
    meta = checkpoint_hparams(path)  # meta.pt, where the reader looks for it (weights_only=True)
    assert meta["config"]["model"]["name"] == "vit_test"
    return int(weights[0, 0])


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_save_that_dies_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.distributed.checkpoint as dcp

    path = tmp_path / "checkpoints" / "last.ckpt"
    _save_sharded(path, 1)
    assert path.is_dir() and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    before = _files(path)

    def die_mid_write(state: dict, checkpoint_id: Path, **kwargs: object) -> None:
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"half a shard")  # bytes reach the disk, then it dies
        raise OSError("No space left on device")

    monkeypatch.setattr(dcp, "save", die_mid_write)
    with pytest.raises(OSError, match="No space left"):
        _save_sharded(path, 2)
    assert _files(path) == before and _step(path) == 1  # byte for byte the previous checkpoint, and it loads
    assert (tmp_path / "checkpoints" / ".last.ckpt.partial").is_dir()  # the crashed save's leftovers, aside
    monkeypatch.undo()

    _save_sharded(path, 3)  # the next save clears them and replaces the checkpoint
    assert _step(path) == 3 and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_save_cut_between_its_two_renames_is_put_back_by_resume_auto(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints = tmp_path / "run" / "checkpoints"
    path = checkpoints / "last.ckpt"
    _save_sharded(path, 1)
    rename = Path.rename

    def die_before_the_second(self: Path, target: Path) -> Path:
        if self.name.endswith(".partial"):
            raise KeyboardInterrupt  # killed between `last.ckpt -> .last.ckpt.old` and `.partial -> last.ckpt`
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", die_before_the_second)
    with pytest.raises(KeyboardInterrupt):
        _save_sharded(path, 2)
    monkeypatch.undo()
    assert sorted(p.name for p in checkpoints.iterdir()) == [".last.ckpt.old", ".last.ckpt.partial"]
    with pytest.raises(ConfigError, match=r"previous checkpoint at .*\.last\.ckpt\.old; resume=auto puts it back"):
        checkpoint_config(path)  # eval.py / predict.py say where it is, and change nothing

    with caplog.at_level("WARNING", logger="vit_exp.checkpoints"):
        assert resume_path(tiny_cfg("resume=auto")) == str(path)
    assert "put back the previous one" in caplog.text and _step(path) == 1
    assert recover_interrupted_swap(path) is False  # nothing left to put back
    _save_sharded(path, 3)
    assert _step(path) == 3 and sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_removing_a_sharded_checkpoint_removes_the_directory_and_its_leftovers(tmp_path: Path) -> None:
    """What ModelCheckpoint does with a checkpoint that fell out of its top k."""
    path = tmp_path / "step=2.ckpt"
    _save_sharded(path, 2)
    (tmp_path / ".step=2.ckpt.partial").mkdir()  # from a save of that name that crashed
    strategy = AtomicFSDPStrategy(state_dict_type="sharded")
    strategy.checkpoint_io = AtomicCheckpointIO()
    strategy.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_hw_fsdp_uses_the_atomic_strategy(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose

    strategy = instantiate(compose("train", ["hw=fsdp"], tmp_path).trainer.strategy)
    assert type(strategy) is AtomicFSDPStrategy and strategy._state_dict_type == "sharded"


# --- the train order -------------------------------------------------------------------------------------------------


def _dataset(n: int = 20) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def _epoch(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_order_depends_on_seed_and_epoch_only() -> None:
    a = resumable_loader(_dataset(), batch_size=4, seed=1, drop_last=True)
    b = resumable_loader(_dataset(), batch_size=4, seed=1, drop_last=True)
    first = _epoch(a)
    assert first == _epoch(b) and sorted(first) == list(range(20))
    a.sampler.set_epoch(1)
    assert _epoch(a) != first  # a new order each epoch
    assert _epoch(resumable_loader(_dataset(), batch_size=4, seed=2)) != first


def test_a_loader_restored_mid_epoch_yields_exactly_the_rest() -> None:
    loader = resumable_loader(_dataset(), batch_size=4, seed=0, drop_last=True)
    loader.sampler.set_epoch(3)
    full = _epoch(loader)
    it = iter(loader)
    seen = [int(i) for _ in range(2) for i in next(it)[0]]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2}

    fresh = resumable_loader(_dataset(), batch_size=4, seed=0, drop_last=True)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(3)  # Lightning sets the epoch again on resume: the position stays
    rest = _epoch(fresh)
    assert seen + rest == full and len(fresh) == len(loader) == 5
    assert fresh.state_dict() == {"epoch": 3, "batches": 5}
    fresh.sampler.set_epoch(4)  # the next epoch starts from its beginning
    assert len(_epoch(fresh)) == 20


def test_ranks_split_the_epoch_without_overlap() -> None:
    shards = [set(ResumableSampler(_dataset(), num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(20))


class RandomCrops(torch.utils.data.Dataset):
    """Item i: an "augmentation" drawn from torch's generator, as the train transforms draw theirs."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), *torch.rand(3).tolist()])


def _batches(loader: torch.utils.data.DataLoader, n: int | None = None) -> list[torch.Tensor]:
    it = iter(loader)
    return [next(it) for _ in range(n)] if n is not None else list(it)


def test_augmentation_depends_on_seed_epoch_and_place_not_on_workers() -> None:
    def loader(workers: int, seed: int = 0) -> torch.utils.data.DataLoader:
        return resumable_loader(RandomCrops(), batch_size=4, seed=seed, num_workers=workers, drop_last=True)

    in_process, with_workers = loader(0), loader(2)
    before = torch.get_rng_state()
    epoch = _batches(in_process)
    assert torch.equal(torch.get_rng_state(), before)  # the main process's generator is left alone
    assert all(torch.equal(a, b) for a, b in zip(epoch, _batches(with_workers), strict=True))
    assert not torch.equal(torch.cat(epoch), torch.cat(_batches(loader(0, seed=1))))
    in_process.sampler.set_epoch(1)
    next_epoch = torch.cat(_batches(in_process))
    assert not torch.equal(next_epoch[:, 1:].sort(0).values, torch.cat(epoch)[:, 1:].sort(0).values)  # new draws


def test_a_batch_fetched_at_once_equals_its_samples_fetched_one_by_one() -> None:
    data = SeededSamples(RandomCrops())
    items = [(i, 1000 + 7 * i) for i in range(6)]
    before = torch.get_rng_state()
    batch = data.__getitems__(items)  # what the DataLoader's fetcher calls
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(sample, data[item]) for sample, item in zip(batch, items, strict=True))
    torch.manual_seed(3)
    plain = data.__getitems__([0, 1])  # plain indices (a replaced sampler) draw from the caller's generator
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(plain, [data[0], data[1]], strict=True))


def test_a_resume_mid_epoch_with_workers_yields_the_same_augmented_images() -> None:
    uninterrupted = resumable_loader(RandomCrops(), batch_size=4, seed=0, num_workers=2, drop_last=True)
    uninterrupted.sampler.set_epoch(2)
    full = _batches(uninterrupted)

    cut = resumable_loader(RandomCrops(), batch_size=4, seed=0, num_workers=2, drop_last=True)
    cut.sampler.set_epoch(2)
    seen = _batches(cut, 3)
    state = cut.state_dict()
    resumed = resumable_loader(RandomCrops(), batch_size=4, seed=0, num_workers=2, drop_last=True)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = _batches(resumed)
    assert len(seen) + len(rest) == len(full) == 6
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, full, strict=True))


# --- resume=auto -----------------------------------------------------------------------------------------------------


def test_resume_auto_finds_the_run_directorys_last_checkpoint(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg("resume=auto", run_dir=tmp_path / "run")
    assert resume_path(cfg) is None  # nothing yet: start from scratch
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    assert resume_path(cfg) == str(last)
    assert resume_path(tiny_cfg("ckpt_path=x.ckpt")) == "x.ckpt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resume=yes"], "resume=auto"),
        (["resume=auto", "ckpt_path=x.ckpt"], "give one of them"),
        (["resume=auto", "callbacks=none"], "callbacks=default"),
    ],
)
def test_resume_auto_misuse_says_what_to_do(tiny_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resume_path(tiny_cfg(*overrides))


# --- NaN / Inf loss --------------------------------------------------------------------------------------------------

EVERY_2_STEPS = ["callbacks.step_checkpoint.every_n_train_steps=2"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        *EVERY_2_STEPS,
        "++trainer.limit_train_batches=8",
        f"+callbacks.poison._target_={HELPERS}.NaNBatch",
        "+callbacks.poison.steps=[5]",
    )
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 .*last\.ckpt.*action=skip"):
        run.train(cfg)
    saved = _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4  # the step checkpoint before the NaN, not overwritten
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


@pytest.mark.filterwarnings("ignore:the training loss is nan")
def test_skip_drops_the_bad_update_and_trains_on(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        "++trainer.limit_train_batches=8",
        "callbacks.nan_guard.action=skip",
        f"+callbacks.poison._target_={HELPERS}.NaNBatch",
        "+callbacks.poison.steps=[2,5]",
    )
    results = run.train(cfg)
    assert results.steps == 8 and results.top1 is not None
    weights = _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# --- preemption ------------------------------------------------------------------------------------------------------


def _fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SLURM's environment for one task, and a stand-in ``scontrol`` that records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "vit",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_NNODES": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return calls


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resuming into it
@pytest.mark.parametrize("background", [False, True], ids=["sync-writer", "background-writer"])
def test_slurm_preemption_saves_requeues_and_the_requeued_job_continues(
    tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    """SIGUSR1 under SLURM: last.ckpt at that step, `scontrol requeue JOBID`, exit status 0; the same command
    again (the requeued job) continues that checkpoint, in the same run directory and the same W&B run. With
    the checkpoint writer in the background, the save is on disk before the job is requeued."""
    calls = _fake_slurm(tmp_path, monkeypatch)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with open(tmp_path / "bin" / "scontrol", "a") as scontrol:  # what the requeued job will find
        scontrol.write(f"[ -f {last} ] && echo on-disk >> {calls}\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # no W&B credentials: offline
    monkeypatch.delenv("WANDB_MODE", raising=False)
    job = ["resume=auto", "trainer.max_epochs=2", "++trainer.limit_train_batches=6", "logger=wandb",
           f"trainer.plugins.0.background={str(background).lower()}"]  # fmt: skip
    signalled = [
        f"+callbacks.preempt._target_={HELPERS}.SignalAtStep",
        "+callbacks.preempt.step=4",
        "+callbacks.preempt.signum=SIGUSR1",
    ]
    default_handler = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted) as exit_info:
        run.train(tiny_cfg(*job, *signalled))
    assert exit_info.value.code == 0
    assert signal.getsignal(signal.SIGUSR1) == default_handler  # handlers restored
    assert calls.read_text().split() == ["requeue", "4242", "on-disk"]
    saved = _ckpt(last)
    assert saved["global_step"] == 5  # saved at the end of the step during which the signal came
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 5}]

    resumed = run.train(tiny_cfg(*job))  # the requeued job: the same command
    assert resumed.steps == 12 and resumed.top1 is not None
    first, second = offline_runs(tmp_path / "run")
    assert first.run_id == second.run_id and first.preempting
    assert second.exit_code == 0
    steps = [row["trainer/global_step"] for row in second.history if "trainer/global_step" in row]
    assert min(steps) >= 5  # the continued run logs from where the first stopped


def test_sigterm_outside_slurm_saves_and_exits_cleanly(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        "++trainer.limit_train_batches=6",
        f"+callbacks.preempt._target_={HELPERS}.SignalAtStep",
        "+callbacks.preempt.step=2",
    )
    with pytest.raises(Preempted):
        run.train(cfg)
    assert _ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 3
    assert not (tmp_path / "scontrol_calls.txt").exists()


# --- the NaN guard on the device -------------------------------------------------------------------------------------


def _fit_tiny(callbacks: list, fused: bool, steps: int = 6, log_every: int = 1) -> tuple[dict, dict]:
    """``steps`` steps of vit_test on fixed tensors; returns the weights and the optimizer state at the end."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from vit_exp.models import create_model
    from vit_exp.module import ViTModule

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(8 * steps, 3, 16, 16), torch.randint(0, 10, (8 * steps,)))
    module = ViTModule(
        create_model("vit_test", num_classes=10, img_size=16), num_classes=10,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.3, fused=fused),
    )  # fmt: skip
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, gradient_clip_val=1.0, log_every_n_steps=log_every, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=8))
    opt = trainer.optimizers[0]
    return module.state_dict(), {i: dict(opt.state[p]) for i, p in enumerate(module.parameters()) if p in opt.state}


@pytest.mark.parametrize("skip", ["restored", "fused", "host"])
@pytest.mark.filterwarnings("ignore:the training loss is nan", "ignore:.*does not have many workers")
def test_a_skipped_step_leaves_weights_and_optimizer_state_as_if_never_taken(
    skip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN batches at steps 0 and 3 (the first step creates the optimizer state); reference: the same run where
    those updates are not taken at all (gradients None). Equal bit for bit, moments and step counts included.
    Each way of skipping: put back on the device (what an accelerator without a fused optimizer does), the fused
    optimizer's own (CUDA's default), the host's flag (the CPU's default)."""
    import lightning.pytorch as pl

    from tests.scale.helpers import NaNBatch
    from vit_exp.callbacks import NonFiniteLossGuard, nan_guard

    fused = skip == "fused"
    if skip == "restored":
        monkeypatch.setattr(nan_guard, "HOST_READ_FREE", ())

    class NoGradsAt(pl.Callback):
        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: object, optimizer: object) -> None:
            if trainer.global_step in (0, 3):
                optimizer.zero_grad(set_to_none=True)  # AdamW leaves such parameters and their state alone

    guarded = _fit_tiny([NaNBatch([0, 3]), NonFiniteLossGuard(action="skip")], fused, log_every=5)
    reference = _fit_tiny([NoGradsAt()], fused)
    for key, value in reference[0].items():
        assert torch.equal(guarded[0][key], value), key
    assert guarded[1].keys() == reference[1].keys()
    for i, state in reference[1].items():
        for key, value in state.items():
            assert torch.equal(guarded[1][i][key], value), (i, key)
    assert reference[1][0]["step"].item() == 4  # 6 steps, 2 not taken


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_stop_is_raised_at_the_next_logging_step_naming_the_step_and_the_weights_stay_good() -> None:
    from tests.scale.helpers import NaNBatch
    from vit_exp.callbacks import NonFiniteLossGuard

    guard = NonFiniteLossGuard()
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 2 \(epoch 0\).*no checkpoint yet") as info:
        _fit_tiny([NaNBatch([2]), guard], fused=False, steps=8, log_every=4)
    assert "updates in a row" not in str(info.value)


@pytest.mark.filterwarnings("ignore:the training loss is nan", "ignore:.*does not have many workers")
def test_skip_stops_after_max_consecutive_skips_read_at_a_logging_step() -> None:
    from tests.scale.helpers import NaNBatch
    from vit_exp.callbacks import NonFiniteLossGuard

    guard = NonFiniteLossGuard(action="skip", max_consecutive_skips=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*2 updates in a row were skipped"):
        _fit_tiny([NaNBatch([1, 2, 3]), guard], fused=False, steps=8, log_every=4)
    assert guard.skipped == 2


def test_preemption_check_every_n_steps_is_checked(tiny_cfg) -> None:
    from vit_exp.checks import check_values

    with pytest.raises(ConfigError, match=r"callbacks.preemption.check_every_n_steps=0 is not .*=10"):
        check_values(tiny_cfg("callbacks.preemption.check_every_n_steps=0"))
