"""Checkpoint writers side by side in one run: does writing in the background pay?

    python -m vit_exp.bench_checkpoint --model vit_base_patch16_224 --batch-size 256 --precision bf16

The same training steps (``vit_exp.bench``'s: forward, backward, AdamW) with a checkpoint every ``--every``
steps (the model's weights and AdamW's state, what Lightning saves of them), written by ``AtomicCheckpointIO``
synchronously, by it with ``background=True`` (``trainer.plugins.0.background=true``), and not at all, in
alternating rounds. Each round's time runs until its last checkpoint is on disk (the background writer is
flushed), so a writer that only defers its work gains nothing. Prints, for each writer, the median round, the
time each save held the loop, and each save's cost: the round's time over the round without saves, per save.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vit_exp.bench import Bench, add_setup_arguments, device_name, prepare, settle_setup, sync
from vit_exp.checkpoints.atomic import AtomicCheckpointIO
from vit_exp.models import create_model

WRITERS = ("none", "sync", "background")


@dataclass
class WriterResult:
    writer: str
    round_s: float
    held_ms_per_save: float  # the loop waiting in save_checkpoint
    cost_ms_per_save: float  # the round over the round without saves, per save
    images_per_s: float


def checkpoint(bench: Bench, step: int) -> dict[str, Any]:
    """What Lightning's checkpoint holds of a model and its optimizer (the rest is a few bytes)."""
    return {"state_dict": bench.model.state_dict(), "optimizer_states": [bench.optimizer.state_dict()],
            "global_step": step}  # fmt: skip


def one_round(
    bench: Bench, writer: str, steps: int, every: int, path: Path, device: torch.device
) -> tuple[float, float]:
    """``steps`` training steps saving every ``every``: seconds until the last save is on disk, and seconds the
    saves held the loop."""
    io = None if writer == "none" else AtomicCheckpointIO(background=writer == "background")
    held = 0.0
    sync(device)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        bench.train_step()
        if io is not None and step % every == 0:
            t = time.perf_counter()
            io.save_checkpoint(checkpoint(bench, step), path)
            held += time.perf_counter() - t
    if io is not None:
        io.teardown()  # waits for the background writer's queue
    sync(device)
    return time.perf_counter() - t0, held


def measure(
    bench: Bench, args: argparse.Namespace, saves: int, device: torch.device, folder: Path
) -> list[WriterResult]:
    rounds: dict[str, list[tuple[float, float]]] = {w: [] for w in WRITERS}
    for i in range(args.rounds):
        k = i % len(WRITERS)  # rotate which writer goes first
        for writer in WRITERS[k:] + WRITERS[:k]:
            rounds[writer].append(one_round(bench, writer, args.steps, args.every, folder / f"{writer}.ckpt", device))
    base = statistics.median(t for t, _ in rounds["none"])
    results = []
    for writer in WRITERS:
        t = statistics.median(t for t, _ in rounds[writer])
        held = statistics.median(h for _, h in rounds[writer])
        per_save = 1e3 / saves if writer != "none" else 0.0
        results.append(
            WriterResult(writer, t, held * per_save, (t - base) * per_save, args.steps * args.batch_size / t)
        )
    return results


def report(results: list[WriterResult], size_mb: float, saves: int) -> str:
    lines = [f"{saves} saves of {size_mb:.0f} MB a round",
             f"{'writer':<12}{'round s':>10}{'held/save ms':>14}{'cost/save ms':>14}{'img/s':>10}"]  # fmt: skip
    for r in results:
        lines.append(f"{r.writer:<12}{r.round_s:>10.2f}{r.held_ms_per_save:>14.1f}{r.cost_ms_per_save:>14.1f}"
                     f"{r.images_per_s:>10.1f}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[WriterResult]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setup_arguments(p)
    p.add_argument("--steps", type=int, default=30, help="training steps a round")
    p.add_argument("--every", type=int, default=10, help="a checkpoint every this many steps")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each writer; the median is reported")
    p.add_argument("--dir", default=None, help="where the checkpoints go (default: the system temp directory)")
    p.add_argument("--json", metavar="PATH", help="also write the settings and results to PATH")
    args = p.parse_args(argv)
    if args.every < 1 or args.steps < args.every:
        p.error(f"--steps {args.steps} --every {args.every}: a round must save at least once (steps >= every >= 1)")
    device, spec = settle_setup(p, args)
    saves = args.steps // args.every
    bench = prepare("vit_exp", lambda: create_model(spec), args, device)
    bench.train_step()  # AdamW's state exists from the first step: every checkpoint has its full size
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vit_exp_ckpt_bench_") as folder:
        results = measure(bench, args, saves, device, Path(folder))
        size_mb = (Path(folder) / "sync.ckpt").stat().st_size / 1e6
    dev_name = device_name(device)
    print(f"{spec.arch} @ {args.img_size}, batch {args.batch_size}, {args.precision}, {args.steps} steps a round, "
          f"{args.rounds} rounds, {dev_name}, torch {torch.__version__}")  # fmt: skip
    print(report(results, size_mb, saves))
    if args.json:
        settings = {"arch": spec.arch, "img_size": args.img_size, "batch_size": args.batch_size, "device": dev_name,
                    "precision": args.precision, "steps": args.steps, "saves": saves, "checkpoint_mb": size_mb}  # fmt: skip
        Path(args.json).write_text(json.dumps({**settings, "writers": [asdict(r) for r in results]}, indent=1))
    return results


if __name__ == "__main__":
    main()
