"""Throughput benchmark: ours and timm's same architecture, side by side in one run.

    python -m vit_exp.bench --model vit_base_patch16_224 --batch-size 128 --precision bf16 --compile
    python -m vit_exp.bench --loop     # our Lightning step against a bare PyTorch loop (vit_exp.bench_loop)

Prints, for each implementation: training images/s (forward + backward + AdamW step), inference images/s,
peak device memory, and model-FLOPs utilisation (MFU: model FLOPs per second over the device's peak), and each
one's speed relative to timm in eager mode. ``--compile`` adds each implementation under ``torch.compile`` beside
its eager run; ``--compile-step`` adds ours with the loss and the optimizer step compiled as well. timm's model
is built from the same ``ModelSpec`` (``timm_counterpart``) and must have exactly as many parameters as ours, or
nothing is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vit_exp.models import ModelSpec, create_model, resolve_spec

# Dense peak TFLOP/s by device-name substring, the first that matches, for MFU (vendor data sheets, no sparsity):
# the PCIe and NVL parts before the SXM ones ("NVIDIA H200", "NVIDIA H100 80GB HBM3"), whose clocks are higher.
PEAK_TFLOPS = {
    "H200 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
}
TIMM_HYBRID = "vit_base_r50_s16_384"  # timm's R50+ViT-B/16: its ResNet backbone, at whatever resolution
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def timm_counterpart(spec: ModelSpec) -> nn.Module:
    """timm's ``VisionTransformer`` with the architecture of ``spec`` (random weights; our state dicts load into it).

    The hybrid is timm's R50+ViT-B/16 at the spec's size, a distilled DeiT timm's ``VisionTransformerDistilled``.
    An attention scale other than head_dim ** -0.5 (the legacy ViT-S/16's 768 ** -0.5) is set on every attention
    module, which puts timm on its explicit attention path: timm's fused path takes no scale.

    Raises:
        ValueError: an architecture timm does not build (a pre-logits layer).
        ImportError: timm is not installed.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kw = spec.kwargs
    if kw["representation_size"]:
        raise ValueError(f"timm's VisionTransformer has no pre-logits layer: {spec.arch} has no timm counterpart; "
                         "run with --no-timm")  # fmt: skip
    args = {k: kw[k] for k in ("img_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
                               "mlp_ratio", "qkv_bias", "class_token", "drop_rate", "attn_drop_rate", "drop_path_rate")}  # fmt: skip
    args.update(norm_layer=partial(nn.LayerNorm, eps=kw["norm_eps"]), fc_norm=False)  # ours: norm, then pool
    if kw["hybrid_layers"]:
        model = timm.create_model(TIMM_HYBRID, pretrained=False, **args)
    elif kw.get("distilled"):  # DeiT's distillation token and second head
        from timm.models.deit import VisionTransformerDistilled

        model = VisionTransformerDistilled(patch_size=kw["patch_size"], **args)
    else:
        model = VisionTransformer(patch_size=kw["patch_size"], **args)
    if kw["attn_scale"] is not None:
        for block in model.blocks:
            block.attn.fused_attn = False
            block.attn.scale = kw["attn_scale"]
    return model


def check_same_size(ours: nn.Module, reference: nn.Module, arch: str) -> int:
    """The parameter count of both models, which must be equal for their timings to compare.

    Raises:
        ValueError: the counts differ.
    """
    n_ours, n_ref = (sum(p.numel() for p in m.parameters()) for m in (ours, reference))
    if n_ours != n_ref:
        raise ValueError(
            f"{arch}: vit_exp's model has {n_ours / 1e6:.2f}M parameters, the timm reference {n_ref / 1e6:.2f}M: not "
            "the same architecture, so not timed side by side; run with --no-timm to time vit_exp alone"
        )
    return n_ours


@dataclass
class Result:
    impl: str
    train_ips: float
    infer_ips: float
    peak_mem_gib: float | None
    train_mfu: float | None


def model_flops_per_image(model: nn.Module, img_size: int) -> float:
    """Forward FLOPs of one image, counted by torch's FLOP counter (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, img_size, img_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v[precision] for k, v in PEAK_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timer's edges)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return time.perf_counter() - t0


def add_setup_arguments(p: argparse.ArgumentParser) -> None:
    """What is timed and where: the options this benchmark shares with ``vit_exp.bench_checkpoint``."""
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on GPU, 8 on CPU")
    p.add_argument("--img-size", type=int, default=None, help="default: the variant's")
    p.add_argument("--precision", choices=list(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def settle_setup(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[torch.device, ModelSpec]:
    """The device and the variant of ``add_setup_arguments``'s options, the device's defaults filled in (TF32 for
    float32 matmuls on CUDA); an unknown variant is ``p.error``."""
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (128 if device.type == "cuda" else 8)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        spec = resolve_spec(args.model, img_size=args.img_size)
    except ValueError as e:
        p.error(str(e))
    args.img_size = spec.img_size
    return device, spec


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class Bench:
    """One implementation, ready to time: its train and inference steps."""

    impl: str
    train_step: Callable[[], None]
    infer_step: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer


def prepare(
    impl: str,
    build: Callable[[], nn.Module],
    args: argparse.Namespace,
    device: torch.device,
    compile: str | None = None,
) -> Bench:
    """One implementation's steps. ``compile``: None (eager), ``"model"`` (``torch.compile`` of the model, what
    ``compile=true`` does in a run) or ``"step"`` (the model with its loss as one compiled function, and the AdamW
    step compiled too: the question whether compiling more than the model pays)."""
    torch.manual_seed(0)
    model = build().to(device)
    # Mixed precision as Lightning's "bf16-mixed": fp32 master weights, autocast compute.
    dtype = DTYPES[args.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    fwd = torch.compile(model) if compile else model
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    if compile == "step":
        # The compiled step makes its own fused kernels from the foreach implementation; a tensor lr lets a
        # schedule change it without a recompilation (PyTorch's compiled-optimizer recipe).
        opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-4, device=device))
        loss_fn = torch.compile(lambda x, y: nn.functional.cross_entropy(model(x), y))
        opt_step = torch.compile(opt.step)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        loss_fn, opt_step = (lambda x, y: nn.functional.cross_entropy(fwd(x), y)), opt.step

    def train_step() -> None:
        model.train()
        with autocast:
            loss = loss_fn(x, y)
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.step(opt)  # fp16: the scaler unscales and may skip the step (the eager step)
        else:
            opt_step()
        scaler.update()
        opt.zero_grad(set_to_none=True)

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), autocast:
            fwd(x)

    return Bench(impl, train_step, infer_step, model, opt)


def own_bytes(b: Bench) -> int:
    """Bytes of the tensors that ``b`` keeps between steps: its weights, their gradients and the optimizer's state
    (each storage once: an eager and a compiled bench of one model share them)."""
    tensors = [t for p in b.model.parameters() for t in (p, p.grad) if t is not None]
    tensors += [t for state in b.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    storages = {(t.device, t.untyped_storage().data_ptr()): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def measure(
    benches: list[Bench],
    args: argparse.Namespace,
    device: torch.device,
    flops: float,
    peak: float | None,
    progress: Callable[[list[Result], int], None] | None = None,
) -> list[Result]:
    """Time the implementations in alternation, ``args.rounds`` times, and keep each one's median.

    Alternating spreads slow phases of a shared machine over both implementations instead of one. Each is warmed
    up (and compiled) just before its first timed run, outside it; ``progress(results so far, rounds done)`` is
    called after every timed run, so that a run cut short (the device check's time box) keeps what it measured.
    """
    n = args.batch_size * args.iters
    train: dict[str, list[float]] = {b.impl: [] for b in benches}
    infer: dict[str, list[float]] = {b.impl: [] for b in benches}
    mem: dict[str, float | None] = {}

    def results() -> list[Result]:
        done = []
        for b in benches:
            if not infer[b.impl]:
                continue
            t, i = statistics.median(train[b.impl]), statistics.median(infer[b.impl])
            mfu = 3 * flops * t / (peak * 1e12) if peak else None  # backward = 2x forward
            done.append(Result(b.impl, t, i, mem[b.impl], mfu))
        return done

    for round_ in range(args.rounds):
        for b in benches:
            if round_ == 0:  # warm-up (and compilation) outside the timed runs
                _timed(b.train_step, device, args.warmup, 0)
                _timed(b.infer_step, device, args.warmup, 0)
            cuda = device.type == "cuda"
            if cuda:  # the peak of this one's step: the other benches' weights and state left out
                others = torch.cuda.memory_allocated(device) - own_bytes(b)
                torch.cuda.reset_peak_memory_stats(device)
            train[b.impl].append(n / _timed(b.train_step, device, 0, args.iters))
            mem[b.impl] = (torch.cuda.max_memory_allocated(device) - others) / 2**30 if cuda else None
            infer[b.impl].append(n / _timed(b.infer_step, device, 0, args.iters))
            if progress is not None:
                progress(results(), round_ + (b is benches[-1]))
    return results()


def main(argv: list[str] | None = None) -> Any:
    """The results of each implementation (with ``--loop``: ``bench_loop.main``'s ``LoopResult``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(p)
    p.add_argument("--compile", action="store_true", help="also time both implementations under torch.compile")
    p.add_argument("--compile-step", action="store_true", help="also time ours with its loss and AdamW step "
                   "compiled too (the model and loss as one function, the optimizer step as another)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU, if not in the table")
    p.add_argument("--no-timm", action="store_true", help="skip the timm reference")
    p.add_argument("--json", metavar="PATH", help="also write the settings and results to PATH")
    p.add_argument("--loop", action="store_true", help="time the training loop against a bare PyTorch loop instead "
                   "(vit_exp.bench_loop; the other arguments go to it)")  # fmt: skip
    if "--loop" in (argv if argv is not None else sys.argv[1:]):
        from vit_exp import bench_loop

        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--loop"]
        if argv is None:  # a fresh process: the run's OpenMP wait policy is set before torch loads (vit_exp.hw)
            os.execv(sys.executable, [sys.executable, "-m", "vit_exp.bench_loop", *rest])
        return bench_loop.main(rest)
    args = p.parse_args(argv)
    device, spec = settle_setup(p, args)
    with torch.device("meta"):  # shapes only
        flops = model_flops_per_image(create_model(spec), args.img_size)
    peak = peak_tflops(device, args.precision, args.peak_tflops)
    impls: list[tuple[str, Callable[[], nn.Module]]] = [("vit_exp", lambda: create_model(spec))]
    if not args.no_timm:
        try:
            import timm

            with torch.device("meta"):
                params = check_same_size(create_model(spec), timm_counterpart(spec), spec.arch)
            impls.append((f"timm {timm.__version__}", lambda: timm_counterpart(spec)))
            print(f"vit_exp and timm: {params / 1e6:.2f}M parameters each")
        except ImportError:
            print("timm is not installed: showing vit_exp only (pip install timm)")
        except ValueError as e:
            p.error(str(e))

    dev_name = device_name(device)
    print(
        f"{spec.arch} @ {args.img_size}, batch {args.batch_size}, {args.precision}, "
        f"compile={args.compile}, compile_step={args.compile_step}, {dev_name}, torch {torch.__version__}"
    )
    print(f"model FLOPs: {flops / 1e9:.2f} GFLOPs/image forward; peak: {f'{peak:.0f} TFLOP/s' if peak else 'unknown'}")
    benches = [prepare(name, build, args, device) for name, build in impls]
    if args.compile:
        benches += [prepare(f"{name} compiled", build, args, device, compile="model") for name, build in impls]
    if args.compile_step:
        benches.append(prepare(f"{impls[0][0]} compiled step", impls[0][1], args, device, compile="step"))
    settings = {"arch": spec.arch, "img_size": args.img_size, "batch_size": args.batch_size,
                "precision": args.precision, "device": dev_name, "torch": torch.__version__,
                "gflops_per_image": flops / 1e9, "peak_tflops": peak, "rounds": args.rounds}  # fmt: skip

    def write(results: list[Result], rounds_done: int) -> None:  # after every timed run: a kill keeps the rest
        if args.json:
            record = {**settings, "rounds_done": rounds_done, "results": [asdict(r) for r in results]}
            Path(args.json).write_text(json.dumps(record, indent=1))

    results = measure(benches, args, device, flops, peak, progress=write)
    print(report(results))
    return results


def report(results: list[Result]) -> str:
    """The table of results; speeds also relative to timm's eager run, when there is one."""
    reference = next((r for r in results if r.impl.startswith("timm") and not r.impl.endswith("compiled")), None)
    width = max(len(r.impl) for r in results) + 2
    lines = [f"{'impl':<{width}}{'train img/s':>13}{'infer img/s':>13}{'peak mem':>11}{'train MFU':>11}"]
    if reference:
        lines[0] += f"{'train vs timm eager':>21}{'infer vs timm eager':>21}"
    for r in results:
        mem = f"{r.peak_mem_gib:.2f} GiB" if r.peak_mem_gib is not None else "-"
        mfu = f"{100 * r.train_mfu:.1f}%" if r.train_mfu is not None else "-"
        line = f"{r.impl:<{width}}{r.train_ips:>13.1f}{r.infer_ips:>13.1f}{mem:>11}{mfu:>11}"
        if reference:
            train, infer = r.train_ips / reference.train_ips, r.infer_ips / reference.infer_ips
            line += f"{train:>20.3f}x{infer:>20.3f}x"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
