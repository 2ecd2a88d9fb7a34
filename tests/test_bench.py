"""The benchmark command runs and reports both implementations side by side (figures are not asserted: speed is
measured by running it, not by tests); timm's side is the same architecture, parameter for parameter."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vit_exp import bench, bench_checkpoint, bench_loop
from vit_exp.bench import Result, main, report
from vit_exp.models import create_model, list_models, resolve_spec

TINY_RUN = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--iters", "1",
            "--rounds", "1", "--warmup", "1"]  # fmt: skip


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_bench_times_ours_and_timm_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    results = main(TINY_RUN)
    assert [r.impl.split()[0] for r in results] == ["vit_exp", "timm"]
    assert all(r.train_ips > 0 and r.infer_ips > 0 for r in results)
    out = capsys.readouterr().out
    assert "vit_exp and timm: 5.68M parameters each" in out
    assert "vit_tiny_patch16_32 @ 32, batch 2, fp32" in out and "train vs timm eager" in out


def test_bench_writes_its_json_after_every_timed_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run cut short (the device check's time box) keeps what it measured: the JSON is rewritten after each
    implementation's timed run, with the rounds done; here the run dies while warming up the second one."""
    path = tmp_path / "b.json"
    calls = []
    real = bench._timed

    def timed(step, device, warmup, iters):  # the third warm-up: the second implementation's training step
        calls.append(warmup)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(step, device, warmup, iters)

    monkeypatch.setattr(bench, "_timed", timed)
    with pytest.raises(KeyboardInterrupt):
        main([*TINY_RUN, "--rounds", "2", "--json", str(path)])
    record = json.loads(path.read_text())
    assert record["rounds"] == 2 and record["rounds_done"] == 0
    assert [r["impl"] for r in record["results"]] == ["vit_exp"] and record["results"][0]["train_ips"] > 0


@pytest.mark.parametrize("name", list_models())
def test_timm_counterpart_has_our_parameter_count(name: str) -> None:
    """Every registered variant, the legacy ViT-S/16 (48.75M, not timm's 22M vit_small_patch16_224) included."""
    pytest.importorskip("timm")
    spec = resolve_spec(name)
    with torch.device("meta"):  # shapes only
        ours, ref = create_model(spec), bench.timm_counterpart(spec)
    assert bench.check_same_size(ours, ref, spec.arch) == n_params(ours)
    if name == "vit_small_patch16_224":
        assert round(n_params(ref) / 1e6, 2) == 48.75


def test_timm_counterpart_of_the_legacy_vit_s16_computes_what_ours_does() -> None:
    """Same weights, same logits: the counterpart keeps the legacy model's qkv, MLP, norm and attention scale."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    spec = resolve_spec("vit_small_patch16_224", img_size=32, depth=2, num_classes=10)
    ours = create_model(spec).eval()
    ref = bench.timm_counterpart(spec).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(ref(x), ours(x), atol=1e-5, rtol=1e-5)


def test_bench_refuses_a_reference_of_another_size(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    monkeypatch.setattr(bench, "timm_counterpart", lambda spec: torch.nn.Linear(3, 4))
    with pytest.raises(SystemExit):
        main(TINY_RUN)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: vit_tiny_patch16_32: vit_exp's model has 5.68M parameters, the timm reference 0.00M" in err
    assert "--no-timm" in err


def test_report_gives_speeds_relative_to_timm_eager() -> None:
    results = [
        Result("vit_exp", 230.0, 700.0, None, None),
        Result("timm 1.0", 200.0, 700.0, None, None),
        Result("vit_exp compiled", 300.0, 1400.0, None, None),
        Result("timm 1.0 compiled", 250.0, 1050.0, None, None),
    ]
    rows = {line.split("  ")[0].strip(): line for line in report(results).splitlines()[1:]}
    assert rows["vit_exp"].endswith("1.150x               1.000x")
    assert rows["vit_exp compiled"].endswith("1.500x               2.000x")
    assert "train vs timm eager" not in report(results[:1])  # no reference, no ratio


def test_loop_bench_times_our_trainer_and_the_bare_loop(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m vit_exp.bench --loop``: both sides train (one short round each here) and the ratio is printed."""
    from vit_exp.bench_loop import LoopResult

    result = main(["--loop", "model=vit_test", "++trainer.limit_train_batches=4", "--epochs", "1", "--rounds", "1",
                   "--e2e-rounds", "0"])  # fmt: skip
    assert isinstance(result, LoopResult) and result.ours_ms > 0 and result.bare_ms > 0
    assert result.e2e_ratio is None  # no end-to-end round asked for
    out = capsys.readouterr().out
    assert "vit_test on digits, batch 64" in out and f"{result.step_ratio:.3f}x" in out


def test_loop_bench_refuses_a_gpu_run_that_its_bare_loop_cannot_follow(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_loop.main(["hw=gpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: trainer.accelerator=gpu: the loop benchmark compares" in err
    assert "hw=cpu" in err


def test_bare_job_does_the_whole_job(tmp_path) -> None:
    """The bare side of the end-to-end figure trains, validates, keeps a checkpoint and tests, as train.py does."""
    from vit_exp.bench_loop import BareJob, compose

    cfg = compose(["model=vit_test", "trainer.max_epochs=2", "sched.warmup_steps=1"], str(tmp_path))
    job = BareJob(cfg)
    top1 = job.run(str(tmp_path), "test")
    assert 0.0 <= top1 <= 1.0 and (tmp_path / "last.pt").is_file()
    assert job.scheduler.last_epoch == 2 * (1258 // 64)  # every step of both epochs, as Lightning steps it


@pytest.mark.slow  # torch.compile of a model, its backward and an AdamW step on the CPU: ~1-3 min
def test_compiled_step_updates_the_weights_as_the_eager_step() -> None:
    """``--compile-step`` (the model and loss as one compiled function, the AdamW step as another) takes the same
    step as the eager run from the same weights and batch, so its speed is the speed of the same work."""
    args = argparse.Namespace(batch_size=2, img_size=32, precision="fp32")
    spec = resolve_spec("vit_test_patch4_32")
    eager, step = (bench.prepare(name, lambda: create_model(spec), args, torch.device("cpu"), compile=c)
                   for name, c in (("eager", None), ("step", "step")))  # fmt: skip
    before = [p.detach().clone() for p in step.model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, eager.model.parameters()))  # the same seed, the same init
    for b in (eager, step):
        b.train_step()
        b.train_step()
    moved = [(a - b).abs().max() for a, b in zip(step.model.parameters(), before)]
    assert min(moved) > 0  # every tensor was updated
    for a, b in zip(step.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_own_bytes_counts_the_weights_their_gradients_and_adamws_state_once() -> None:
    """What a bench keeps between steps, which the peak-memory figure holds apart from the other benches' tensors:
    after a step, the weights and twice as much in AdamW's two moments, plus its step counters (the step frees its
    gradients: set to None); a gradient that is kept counts too; a tensor seen twice (a tied weight) is one
    storage."""
    args = argparse.Namespace(batch_size=2, img_size=32, precision="fp32")
    spec = resolve_spec("vit_test_patch4_32")
    b = bench.prepare("vit_exp", lambda: create_model(spec), args, torch.device("cpu"))
    weights = sum(p.numel() * 4 for p in b.model.parameters())
    assert bench.own_bytes(b) == weights  # before a step: no gradient, no optimizer state
    b.train_step()
    steps = sum(s["step"].untyped_storage().nbytes() for s in b.optimizer.state.values())
    assert bench.own_bytes(b) == 3 * weights + steps
    b.model.head.weight.grad = torch.zeros_like(b.model.head.weight)
    grad = b.model.head.weight.numel() * 4
    assert bench.own_bytes(b) == 3 * weights + steps + grad
    b.model.extra = b.model.head  # the same tensors reachable twice
    assert bench.own_bytes(b) == 3 * weights + steps + grad


def test_checkpoint_bench_times_each_writer_until_its_last_save_is_on_disk(tmp_path, capsys) -> None:
    results = bench_checkpoint.main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2",
                                     "--steps", "2", "--every", "1", "--rounds", "1", "--dir", str(tmp_path),
                                     "--json", str(tmp_path / "r.json")])  # fmt: skip
    assert [r.writer for r in results] == ["none", "sync", "background"]
    none, sync, background = results
    assert none.held_ms_per_save == none.cost_ms_per_save == 0 and sync.held_ms_per_save > 0
    assert background.round_s > 0 and background.images_per_s > 0
    out = capsys.readouterr().out
    assert "2 saves of 68 MB a round" in out and "background" in out  # vit_tiny: 5.7M parameters, AdamW's 2 moments
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # the checkpoints went with their temp folder


def test_checkpoint_bench_saves_the_step_it_was_asked_at(tmp_path) -> None:
    """The background writer's file holds the weights of the step that saved it, not of the steps run since."""
    args = argparse.Namespace(batch_size=2, img_size=32, precision="fp32")
    spec = resolve_spec("vit_tiny_patch16_224", img_size=32)
    b = bench.prepare("vit_exp", lambda: create_model(spec), args, torch.device("cpu"))
    seen = {}
    real_step = b.train_step

    def step_and_keep() -> None:
        real_step()
        seen[len(seen) + 1] = b.model.head.weight.detach().clone()

    b.train_step = step_and_keep
    path = tmp_path / "bg.ckpt"
    bench_checkpoint.one_round(b, "background", steps=5, every=2, path=path, device=torch.device("cpu"))
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 4 and "state" in saved["optimizer_states"][0]
    assert torch.equal(saved["state_dict"]["head.weight"], seen[4]) and not torch.equal(seen[4], seen[5])


def test_checkpoint_bench_refuses_a_round_without_a_save(capsys) -> None:
    with pytest.raises(SystemExit):
        bench_checkpoint.main(["--steps", "3", "--every", "5"])
    assert "error: --steps 3 --every 5: a round must save at least once" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
     ("NVIDIA GeForce RTX 4090", None)],
)  # fmt: skip
def test_mfu_peak_is_the_parts_own(monkeypatch: pytest.MonkeyPatch, name: str, peak: float | None) -> None:
    """The PCIe and NVL parts run slower clocks than the SXM ones whose names they contain: their own peak."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.peak_tflops(torch.device("cuda"), "bf16", None) == peak
