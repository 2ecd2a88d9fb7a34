"""What a run reports: its figures gathered after test, ``results.json`` in the run directory, and the same
figures printed as a table (training) or in the model card's form (evaluation)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from vit_exp.data.datamodule import ViTDataModule

RESULTS_FILE = "results.json"


@dataclass
class Results:
    """The figures of one run. Accuracies are in percent, as in the model card."""

    model: str
    data: str
    split: str
    top1: float | None
    top5: float | None
    params: int
    wall_time_s: float
    run_dir: str
    images: int | None = None  # evaluated images
    images_per_s: float | None = None  # training throughput
    # after the fit's first steps (a compile's, a warm-up's), and the shares of that time between steps
    # (vit_exp.callbacks.Throughput): the host's, waiting for the next batch; the device's (CUDA), outside the steps
    images_per_s_steady: float | None = None
    input_wait_share: float | None = None
    device_gap_share: float | None = None
    checkpoint: str | None = None  # best by val top-1 (or the one evaluated)
    last_checkpoint: str | None = None
    best_val_top1: float | None = None
    steps: int | None = None
    published_top1: float | None = None  # the model card's ImageNet figures, where known
    published_top5: float | None = None
    fewshot: dict[str, float] | None = None  # few-shot top-1 (%) by shots per class ("10": ...), eval.py fewshot.shots

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Results:
        return cls(**json.loads(Path(path).read_text()))


def percent(value: Any) -> float | None:
    """A fraction (float or tensor) in percent, as the model card gives accuracies."""
    return None if value is None else round(100 * float(value), 4)


def checkpoint_callbacks(trainer: pl.Trainer) -> tuple[Any, Any]:
    """(the checkpoint callback with a monitor: the best, the one without: the latest), either may be None."""
    callbacks = trainer.checkpoint_callbacks
    return next((c for c in callbacks if c.monitor), None), next((c for c in callbacks if not c.monitor), None)


def report(
    trainer: pl.Trainer,
    datamodule: ViTDataModule,
    model: str,
    params: int,
    run_dir: str,
    start: float,
    show: Callable[[Results], None],
    **extra: Any,
) -> Results:
    """The figures of a run whose ``trainer.test`` has just finished; rank 0 saves them in ``run_dir`` and shows
    them. ``start``: the run's ``time.perf_counter()`` at its start; ``extra``: further ``Results`` fields."""
    try:
        images = len(datamodule.datasets[datamodule.test_split])
    except (TypeError, KeyError):  # a stream of unknown length: the images the test read
        images = getattr(trainer.lightning_module, "tested_images", None)
    results = Results(
        model=model,
        data=datamodule.name,
        split=datamodule.test_split,
        top1=percent(trainer.callback_metrics.get("test/top1")),
        top5=percent(trainer.callback_metrics.get("test/top5")),
        params=params,
        wall_time_s=round(time.perf_counter() - start, 2),
        run_dir=run_dir,
        images=images,
        **extra,
    )
    if trainer.is_global_zero:
        results.save(run_dir)
        show(results)
    return results


def _short(path: str | None) -> str:
    """A path relative to the working directory when it lies below it (outputs/...), else as it is."""
    if not path:
        return "none"
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def summary_rows(r: Results) -> list[tuple[str, str]]:
    """(label, value) rows of the end-of-run table."""
    rows = [
        (f"{r.split} top-1", _pct(r.top1)),
        (f"{r.split} top-5", _pct(r.top5)),
        ("parameters", f"{r.params / 1e6:.2f} M ({r.params:,})"),
        ("images/s (train)", "n/a" if r.images_per_s is None else f"{r.images_per_s:,.0f}"),
        ("wall time", f"{r.wall_time_s:.1f} s"),
        ("run directory", _short(r.run_dir)),
        ("checkpoint", _short(r.checkpoint)),
    ]
    if r.last_checkpoint:
        rows.append(("last checkpoint", _short(r.last_checkpoint)))
    return rows


def print_summary(r: Results) -> None:
    """The end-of-training table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{r.model} on {r.data}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for label, value in summary_rows(r):
        table.add_row(label, value)
    Console().print(table)


def model_card_results(r: Results) -> str:
    """Top-1/top-5 in the model card's results form, with the card's published figures beside ours."""

    def line(k: int, ours: float | None, card: float | None) -> str:
        published = f"   (model card, ImageNet: {card:.2f}%)" if card is not None else ""
        return f"    Top {k} Accuracy: {_pct(ours)}{published}"

    images = f", {r.images:,} images" if r.images else ""
    return "\n".join(
        [
            f"- Name: {r.model}",
            "  Results:",
            "  - Task: Image Classification",
            f"    Dataset: {r.data} ({r.split}{images})",
            "    Metrics:",
            "  " + line(1, r.top1, r.published_top1),
            "  " + line(5, r.top5, r.published_top5),
        ]
        + [f"      {k}-shot linear Top 1 Accuracy: {_pct(v)}" for k, v in (r.fewshot or {}).items()]
    )
