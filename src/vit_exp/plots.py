"""Figures of a run: training curves from the CSV logger's ``metrics.csv``, and a confusion matrix.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no backend is
chosen and no global state is touched, so the same code serves a headless run and a notebook (where
``display(fig)``, or the figure as a cell's last value, shows it).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_matrix.png"
MAX_CONFUSION_CLASSES = 20  # beyond this a confusion matrix is unreadable; none is drawn

Series = dict[str, list[tuple[int, float]]]  # metric name -> [(step, value)]


def read_metrics(path: str | Path) -> Series:
    """The metrics of a Lightning ``metrics.csv`` (one row per logging call, blanks for the other columns).

    Returns:
        Each metric's (step, value) pairs in file order; ``step`` and ``epoch`` are not metrics.
    """
    series: Series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"])) if row.get("step") else None
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None) or step is None:
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def is_accuracy(metric: str) -> bool:
    """Whether a logged metric is an accuracy (a fraction in metrics.csv, drawn in percent as tables give it)."""
    return metric.endswith(("/top1", "/top5")) or metric.startswith("fewshot/")


def _drawn(metric: str, points: list[tuple[int, float]]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(steps, values) as drawn: accuracies in percent."""
    steps, values = zip(*points)
    return steps, tuple(100 * v for v in values) if is_accuracy(metric) else values


def _lr_lines(series: Series, keys: list[str]) -> list[tuple[str, list[str]]]:
    """(label, keys) per learning-rate line: groups on the same schedule share one line labelled with all of them
    (``lr-AdamW/pg1 = pg2``: AdamW's decayed and non-decayed groups), so that no line hides another."""
    same: dict[tuple[tuple[int, float], ...], list[str]] = {}
    for key in keys:
        same.setdefault(tuple(series[key]), []).append(key)
    return [(ks[0] + "".join(f" = {k.rsplit('/', 1)[-1]}" for k in ks[1:]), ks) for ks in same.values()]


def _panels(series: Series) -> list[tuple[str, list[str]]]:
    """(title, metric names) of the curve panels: loss, learning rate, top-1 (whichever were logged)."""
    lr = sorted(k for k in series if k.startswith("lr-"))
    loss = [k for k in ("train/loss", "val/loss") if k in series]
    top1 = [k for k in series if k.endswith("/top1") and not k.startswith("test/")]
    top1 += sorted(k for k in series if k.startswith("fewshot/"))
    return [(title, keys) for title, keys in (("loss", loss), ("learning rate", lr), ("top-1", top1)) if keys]


def plot_training_curves(metrics_csv: str | Path, out: str | Path | None = None) -> Figure:
    """Loss, learning rate and top-1 (in percent) against the step, one panel each; saved as PNG when ``out``
    is given. Learning-rate groups on the same schedule are drawn as one line that names them all.

    Raises:
        ValueError: the file holds none of those metrics.
    """
    from matplotlib.figure import Figure

    series = read_metrics(metrics_csv)
    panels = _panels(series)
    if not panels:
        raise ValueError(
            f"{metrics_csv} has no loss, learning-rate or top-1 column (it has {sorted(series) or 'no metrics'}); "
            "is it the metrics.csv of a training run?"
        )
    # Margins in inches, fixed: the panels' labels are always the same few short strings. A layout engine
    # ("constrained") would draw the figure once more to measure them, about half of the plot's 0.3 s here.
    width, height = 4.5 * len(panels), 3.4
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                        wspace=0.85 / (4.5 - 0.85))  # fmt: skip
    styles = ("-", "--", ":", "-.")
    for ax, (title, keys) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        lines = _lr_lines(series, keys) if title == "learning rate" else [(k, [k]) for k in keys]
        for i, (label, (key, *_)) in enumerate(lines):
            steps, values = _drawn(key, series[key])
            marker = None if len(steps) > 1 else "o"
            ax.plot(steps, values, label=label, marker=marker, linestyle=styles[i % len(styles)])
        ax.set(title=title, xlabel="step")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        elif title == "top-1":
            ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if out is not None:
        fig.savefig(out, dpi=100)
    return fig


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    import torch

    index = targets.long().flatten() * num_classes + preds.long().flatten()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    out: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Counts with each row shaded by its share of that true class; saved as PNG when ``out`` is given.

    Raises:
        ValueError: more than ``MAX_CONFUSION_CLASSES`` classes, or names that do not match the matrix.
    """
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix)
    n = counts.shape[0]
    if n > MAX_CONFUSION_CLASSES:
        raise ValueError(f"{n} classes: a confusion matrix is drawn for at most {MAX_CONFUSION_CLASSES}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}x{n} confusion matrix")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_xticks(range(n), names, rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"{int(counts.sum())} images, top-1 {100 * accuracy:.2f}%")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    if out is not None:
        fig.savefig(out, dpi=100)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """The rendered figure as an (H, W, 3) uint8 array, for loggers that take images."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def plot_runs(metrics_csvs: dict[str, str | Path], metric: str = "val/top1") -> Figure:
    """One metric of several runs against the step, a line per run (e.g. the jobs of a sweep); accuracies in percent.

    Args:
        metrics_csvs: {label: the run's metrics.csv}; runs that did not log ``metric`` are left out.
        metric: A column of metrics.csv.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for label, path in metrics_csvs.items():
        points = read_metrics(path).get(metric)
        if points:
            ax.plot(*_drawn(metric, points), marker="o" if len(points) == 1 else None, label=label)
    if not ax.lines:
        raise ValueError(f"none of the runs logged {metric!r}")
    ax.set(xlabel="step", ylabel=f"{metric} (%)" if is_accuracy(metric) else metric, title=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_sweep(rows: Sequence[dict], x: str, y: str = "top1", group: str | None = None) -> Figure:
    """One metric of a sweep's runs against one of its parameters (a line per value of ``group``).

    Args:
        rows: One dict per run (e.g. the rows of a sweep's ``summary.csv``); rows missing ``x`` or ``y`` are left out.
        x: The parameter on the horizontal axis (log scale when its values span 100x or more).
        y: The metric.
        group: A second parameter, one line per value; None: one line.
    """
    from matplotlib.figure import Figure

    lines: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        xv, yv = _number(row.get(x)), _number(row.get(y))
        if xv is None or yv is None:  # a failed or unfinished run
            continue
        label = f"{group}={row.get(group)}" if group else y
        lines.setdefault(label, []).append((xv, yv))
    if not lines:
        raise ValueError(f"no run has both {x!r} and {y!r}")
    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for label, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    xs = [p[0] for points in lines.values() for p in points]
    if min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=y, title=f"{y} by {x}")
    ax.grid(alpha=0.3)
    if group:
        ax.legend(fontsize="small")
    return fig


def _number(value: object) -> float | None:
    """A float, or None for a missing value (None, "", NaN as pandas reads an empty CSV cell)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number
