"""The run figures from hand-made inputs: metrics.csv parsing, curves, confusion matrix, sweep plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vit_exp import plots

METRICS = """epoch,lr-AdamW/pg1,step,train/loss,val/loss,val/top1,test/top1
,0.001,9,,,,
0,,9,2.3,,,
0,,18,,2.2,0.15,
,0.002,19,,,,
1,,19,1.9,,,
1,,37,,1.8,0.55,
1,,38,,,,0.6
"""
TWO_GROUPS = """epoch,lr-AdamW/pg1,lr-AdamW/pg2,step,train/loss,val/top1
,0.001,0.001,9,,
0,,,9,2.3,
0,,,18,,0.15
,0.002,0.002,19,,
1,,,37,,0.55
"""


def test_read_metrics_keeps_each_metric_with_its_step(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    series = plots.read_metrics(tmp_path / "metrics.csv")
    assert series["train/loss"] == [(9, 2.3), (19, 1.9)]
    assert series["val/top1"] == [(18, 0.15), (37, 0.55)]
    assert series["lr-AdamW/pg1"] == [(9, 0.001), (19, 0.002)]
    assert "epoch" not in series and "step" not in series


def test_training_curves_have_loss_lr_and_top1_panels(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    fig = plots.plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "learning rate", "top-1"]
    assert [line.get_label() for line in fig.axes[2].lines] == ["val/top1"]  # test/top1 is one point, not a curve
    assert (tmp_path / "curves.png").stat().st_size > 0
    (tmp_path / "empty.csv").write_text("epoch,step,test/top1\n0,0,0.5\n")
    with pytest.raises(ValueError, match="no loss, learning-rate or top-1"):
        plots.plot_training_curves(tmp_path / "empty.csv")


def test_curves_draw_top1_in_percent_and_every_lr_group_visibly(tmp_path: Path) -> None:
    """Two lr groups on one schedule are one line that names both; on two schedules, two lines of two styles."""
    (tmp_path / "metrics.csv").write_text(TWO_GROUPS)
    series = plots.read_metrics(tmp_path / "metrics.csv")
    assert series["lr-AdamW/pg1"] == series["lr-AdamW/pg2"] == [(9, 0.001), (19, 0.002)]
    fig = plots.plot_training_curves(tmp_path / "metrics.csv")
    lr, top1 = fig.axes[1], fig.axes[2]
    assert [line.get_label() for line in lr.lines] == ["lr-AdamW/pg1 = pg2"]
    assert list(top1.lines[0].get_ydata()) == pytest.approx([15.0, 55.0]) and top1.get_ylabel() == "%"

    (tmp_path / "two.csv").write_text("step,lr-AdamW/pg1,lr-AdamW/pg2,train/loss\n0,0.1,0.0,2.0\n1,0.2,0.0,1.0\n")
    lr = plots.plot_training_curves(tmp_path / "two.csv").axes[1]
    assert [line.get_label() for line in lr.lines] == ["lr-AdamW/pg1", "lr-AdamW/pg2"]
    assert len({line.get_linestyle() for line in lr.lines}) == 2
    runs = plots.plot_runs({"a": tmp_path / "metrics.csv"}).axes[0]
    assert list(runs.lines[0].get_ydata()) == pytest.approx([15.0, 55.0]) and runs.get_ylabel() == "val/top1 (%)"


def test_confusion_matrix_counts_true_rows_and_predicted_columns(tmp_path: Path) -> None:
    targets, preds = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    matrix = plots.confusion_matrix(preds, targets, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    fig = plots.plot_confusion_matrix(matrix, ["cat", "dog", "bird"], tmp_path / "cm.png")
    assert fig.axes[0].get_title() == "6 images, top-1 66.67%"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "bird"]
    with pytest.raises(ValueError, match="at most 20"):
        plots.plot_confusion_matrix(np.zeros((21, 21)))
    with pytest.raises(ValueError, match="2 class names"):
        plots.plot_confusion_matrix(matrix, ["cat", "dog"])


def test_figure_to_array_is_an_rgb_image() -> None:
    fig = plots.plot_confusion_matrix(np.eye(2, dtype=int))
    image = plots.figure_to_array(fig)
    assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8


def test_sweep_plot_draws_one_line_per_group() -> None:
    rows = [{"lr": lr, "seed": s, "top1": 50 + 1000 * lr + s} for lr in (1e-4, 1e-3, 1e-2) for s in (0, 1)]
    rows.append({"lr": 1e-3, "seed": 0, "top1": None})  # a failed run
    fig = plots.plot_sweep(rows, x="lr", y="top1", group="seed")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["seed=0", "seed=1"]
    assert ax.get_xscale() == "log"
    assert list(ax.lines[1].get_ydata()) == [51.1, 52.0, 61.0]
