"""The insight callbacks in a real (short) digits run: few-shot curve, attention images, run figures."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image

from tests.conftest import TINY, compose
from vit_exp import plots, run
from vit_exp.build import build_datamodule, build_model
from vit_exp.callbacks import AttentionImages
from vit_exp.checks import validate
from vit_exp.fewshot_eval import fewshot_eval, fewshot_metric
from vit_exp.results import Results

CHANCE = 0.1  # ten digits


def _fewshot_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} of the few-shot metrics in the run's metrics.csv."""
    rows = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k.startswith("fewshot/") and v}
            if values:
                rows[int(row["step"])] = values
    return rows


def test_fewshot_of_trained_features_beats_random_init_which_beats_chance(trained_run: Results) -> None:
    """FewShotEval logs at the start (random init), every 50 steps and at the end; 10-shot accuracy grows
    from above chance (random features) to well above it (after ~110 steps of training)."""
    rows = _fewshot_rows(Path(trained_run.run_dir))
    assert sorted(rows) == [0, 50, 100, trained_run.steps]
    assert set(rows[0]) == {fewshot_metric(1), fewshot_metric(10)}
    random_init, trained = rows[0]["fewshot/10shot"], rows[trained_run.steps]["fewshot/10shot"]
    assert trained > random_init + 0.08, rows
    assert random_init > CHANCE + 0.03, rows
    assert rows[trained_run.steps]["fewshot/10shot"] > rows[trained_run.steps]["fewshot/1shot"]


def test_eval_fewshot_of_a_checkpoint_beats_a_random_model(trained_run: Results, tiny_cfg, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    """`python eval.py ckpt_path=... fewshot.shots=[10]` on the test split, against the same at random init."""
    cfg = tiny_cfg(f"ckpt_path={trained_run.checkpoint}", "fewshot.shots=[10]", config_name="eval",
                   run_dir=tmp_path / "eval")  # fmt: skip
    evaluated = run.evaluate(cfg)
    assert evaluated.top1 == pytest.approx(trained_run.top1)
    assert "10-shot linear Top 1 Accuracy" in capsys.readouterr().out
    assert Results.load(tmp_path / "eval" / "results.json").fewshot == evaluated.fewshot

    spec = validate(cfg)
    datamodule = build_datamodule(cfg.data, spec.preprocessing)
    torch.manual_seed(0)
    random_model = build_model(spec, cfg.model)
    random_init = fewshot_eval(random_model, datamodule, shots=[10], test_split="test")[10]
    assert evaluated.fewshot["10"] / 100 > random_init + 0.08 > CHANCE + 0.08


def test_attention_images_reach_tensorboard_with_predictions(trained_run: Results) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((Path(trained_run.run_dir) / "tensorboard").glob("events.out.tfevents.*"))
    images, captions = {}, {}
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "tensors": 0})
        acc.Reload()
        images.update({t: acc.Images(t) for t in acc.Tags()["images"]})
        captions.update({t: acc.Tensors(t) for t in acc.Tags()["tensors"]})
    attention = {t: v for t, v in images.items() if t.startswith("attention/")}
    assert sorted(attention) == [f"attention/{i}" for i in range(4)]  # num_images=4
    assert [e.step for e in attention["attention/0"]] == [19, 76]  # every 3rd validation epoch (19 steps each)
    # the input, the rollout and one panel per head (vit_test: 2 heads), side by side
    assert attention["attention/0"][0].width == 4 * attention["attention/0"][0].height
    text = captions["attention/0/text_summary"][-1].tensor_proto.string_val[0].decode()
    assert text.startswith("pred ") and ", true " in text
    assert "confusion_matrix/0" in images  # RunPlots logs its figure too


def test_run_figures_are_written(trained_run: Results) -> None:
    run_dir = Path(trained_run.run_dir)
    for name in (plots.CURVES_FILE, plots.CONFUSION_FILE):
        with Image.open(run_dir / name) as image:
            assert image.width > 300 and image.height > 200
    series = plots.read_metrics(run_dir / "metrics.csv")
    assert series["fewshot/10shot"][-1][0] == trained_run.steps  # the curves include the last evaluation


@pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\)")  # Lightning vs newer torch
def test_attention_images_log_to_a_wandb_style_logger(tiny_cfg) -> None:
    """A logger with ``log_image`` (W&B's API) gets one panel of captioned images per validation epoch."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger

    class ImageLogger(Logger):
        name, version = "stub", "0"
        calls: ClassVar[list[dict]] = []

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_image(self, key, images, step=None, **kwargs):
            self.calls.append(dict(key=key, images=images, step=step, **kwargs))

    cfg = tiny_cfg("trainer.max_epochs=2")
    spec = validate(cfg)
    datamodule = build_datamodule(cfg.data, spec.preprocessing)
    from vit_exp.module import ViTModule

    module = ViTModule(build_model(spec, cfg.model), num_classes=10, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    callback = AttentionImages(num_images=3, heads=False)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=ImageLogger(), log_every_n_steps=1,
                         callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert [c["step"] for c in ImageLogger.calls] == [2, 4] and callback.logged == 6
    call = ImageLogger.calls[-1]
    assert call["key"] == "attention" and len(call["images"]) == 3 and len(call["caption"]) == 3
    assert call["images"][0].shape[-1] == 3 and call["images"][0].dtype.name == "uint8"
    assert all(c.startswith("pred ") for c in call["caption"])


def test_fewshot_callback_refuses_multi_label_data() -> None:
    with pytest.raises(ValueError, match="single-label"):
        fewshot_eval(torch.nn.Linear(1, 1), type("DM", (), {"multi_label": True})())


def test_insight_callbacks_compose(tmp_path: Path) -> None:
    cfg = compose("train", [*TINY, "callbacks=insight"], tmp_path)
    assert {"best_checkpoint", "plots", "fewshot", "attention_images"} <= set(cfg.callbacks)
