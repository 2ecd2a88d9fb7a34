"""predict.py and export from our checkpoints: the model, its preprocessing and its class names come back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, compose
from vit_exp import export, predict
from vit_exp.data.digits import DigitsSource
from vit_exp.errors import ConfigError
from vit_exp.models import create_model
from vit_exp.results import Results


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A folder of 8x8 digit PNGs (two in a subfolder) from the test split, and their labels."""
    folder = tmp_path_factory.mktemp("digits")
    dataset = DigitsSource().dataset("test", transform=lambda image: image)
    labels = []
    for i in range(6):
        image, label = dataset[i]
        (folder / ("more" if i >= 4 else "")).mkdir(exist_ok=True)
        image.save(folder / ("more" if i >= 4 else "") / f"{i}.png")
        labels.append(label)
    return folder, labels


def test_predictor_matches_the_test_pipeline(trained_run: Results, digit_images) -> None:
    """Files through predict's preprocessing give the probabilities the model gives the datamodule's batches."""
    folder, labels = digit_images
    predictor = predict.Predictor.from_checkpoint(trained_run.checkpoint)
    assert predictor.class_names == DigitsSource.class_names  # stored in the checkpoint
    assert predictor.mean == (0.5, 0.5, 0.5) and predictor.transform is not None
    files = predict.list_images(folder)
    assert [f.relative_to(folder).as_posix() for f in files] == [
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "more/4.png",
        "more/5.png",
    ]

    cfg = compose("train", ["model=vit_test"], folder)
    from vit_exp.build import build_datamodule
    from vit_exp.models import resolve_spec

    dm = build_datamodule(cfg.data, resolve_spec("vit_test", 4, 16).preprocessing)
    dm.setup("test")
    x, y = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        expected = predictor.model(dm.on_after_batch_transfer((x[:6], y[:6]), 0)[0]).softmax(-1)
    torch.testing.assert_close(predictor.probabilities(files, batch_size=4), expected, atol=1e-5, rtol=1e-4)
    assert y[:6].tolist() == labels


def test_predict_prints_top5_names_of_each_image(trained_run: Results, digit_images, tiny_cfg, capsys) -> None:
    folder, _ = digit_images
    cfg = tiny_cfg(f"ckpt_path={trained_run.checkpoint}", f"images={folder}", config_name="predict")
    results = predict.main(cfg)
    out = capsys.readouterr().out.splitlines()
    assert len(results) == 6 and all(len(top) == 5 for top in results)
    assert out[0] == str(folder / "0.png") and len(out) == 6 * 6
    assert out[1].startswith("  1. ") and out[1].split()[-1] in DigitsSource.class_names
    probs = [p for _, p in results[0]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_predict_names_imagenet_classes_for_published_weights(tmp_path: Path, digit_images, tiny_cfg, capsys) -> None:
    """A 1000-class head (published weights through model.pretrained) is named with ImageNet's classes."""
    folder, _ = digit_images
    torch.manual_seed(0)
    model = create_model("vit_test", num_classes=1000, img_size=16)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # an untrained head that still ranks classes
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    cfg = tiny_cfg("model=vit_test", f"model.pretrained={tmp_path / 'weights.pth'}", f"images=[{folder / '0.png'}]",
                   "topk=3", config_name="predict")  # fmt: skip
    (top,) = predict.main(cfg)
    names = predict.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and len(top) == 3
    with torch.no_grad():
        logits = model.eval()(
            torch.stack([predict.eval_preprocessing(model)[0](folder / "0.png")]).float().sub(127.5) / 127.5
        )
    assert [name for name, _ in top] == [names[k] for k in logits.topk(3).indices[0].tolist()]
    assert capsys.readouterr().out.splitlines()[1].endswith(top[0][0])


def test_names_stored_with_a_1000_class_checkpoint_win_over_imagenets(tmp_path: Path) -> None:
    """A run of ours with a 1000-class head (not ImageNet's classes) is named with its own stored names."""
    model = create_model("vit_test", num_classes=1000, img_size=16)
    stored = [f"species {i}" for i in range(1000)]
    config = {"model": {"name": "vit_test", "patch_size": 4, "img_size": 16, "num_classes": 1000}, "data": {}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": config, "class_names": stored, "num_classes": 1000}},
               tmp_path / "run.ckpt")  # fmt: skip
    assert predict.Predictor.from_checkpoint(tmp_path / "run.ckpt").class_names == stored
    assert predict.Predictor.from_model(model, class_names=stored).class_names == stored
    # A run of ours that stored no names gets indices, not ImageNet's names; published weights get ImageNet's.
    assert predict.resolve_class_names(1000, published=False)[:2] == ["0", "1"]
    assert predict.resolve_class_names(1000, published=True)[0] == "tench"
    assert predict.Predictor.from_model(model).class_names[0] == "tench"


def test_predict_does_not_import_the_orchestrator() -> None:
    """predict builds its model from the models API: importing it leaves run.py (and Lightning) unloaded."""
    code = "import sys, vit_exp.predict; print('vit_exp.run' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]


def test_predict_says_what_is_missing(tiny_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="which images"):
        predict.main(tiny_cfg("ckpt_path=x.ckpt", config_name="predict"))
    with pytest.raises(ConfigError, match="which model"):
        predict.main(tiny_cfg(f"images={tmp_path}", config_name="predict"))
    with pytest.raises(ConfigError, match="no image files"):
        predict.list_images(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        predict.list_images([tmp_path / "nope.jpg"])
    (tmp_path / "notes.txt").write_text("not an image\n")  # given by name: no suffix filter, so its header is read
    with pytest.raises(ConfigError, match=r"images: .*notes.txt is not an image PIL can read \(cannot identify"):
        predict.list_images([tmp_path / "notes.txt"])
    with pytest.raises(ConfigError, match=r"^topk=0 is not a whole number >= 1; set e.g. topk=5"):
        predict.main(tiny_cfg(f"images={tmp_path}", "ckpt_path=x.ckpt", "topk=0", config_name="predict"))
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match="2 class names but the model has 10"):
        predict.resolve_class_names(10, file=tmp_path / "names.txt")


def test_a_truncated_jpeg_is_named_in_one_line(tmp_path: Path) -> None:
    """Its header reads (list_images lets it through); its data does not: PIL's OSError mid-run before."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    files = predict.list_images(tmp_path)
    predictor = predict.Predictor.from_model(create_model("vit_test", num_classes=3, img_size=16))
    assert len(predictor(files[1:], topk=1)) == 1  # whole.jpg
    with pytest.raises(ConfigError, match=rf"^images: {tmp_path}/cut.jpg cannot be decoded \(image file is truncated"):
        predictor(files)


def test_predict_cli(trained_run: Results, digit_images) -> None:
    """`python predict.py ckpt_path=... images=...` as a user runs it; nothing is written to the working directory."""
    folder, _ = digit_images
    cmd = [sys.executable, "predict.py", f"ckpt_path={trained_run.checkpoint}", f"images={folder / 'more'}", "topk=2"]
    before = set(ROOT.iterdir())
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == str(folder / "more" / "4.png") and lines[1].startswith("  1. ") and len(lines) == 6
    assert set(ROOT.iterdir()) == before


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_export_from_our_checkpoint_matches_eager(trained_run: Results, fmt: str, tmp_path: Path) -> None:
    """No --model: the architecture comes from the config stored in the .ckpt."""
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt2")
    diff = export.main(["--ckpt", trained_run.checkpoint, "--format", fmt, "--out", str(out)])
    assert out.stat().st_size > 0 and diff < 1e-4


def test_export_without_model_rejects_published_weights(tmp_path: Path) -> None:
    torch.save(create_model("vit_test", num_classes=10, img_size=16).state_dict(), tmp_path / "w.pth")
    with pytest.raises(SystemExit):
        export.main(["--ckpt", str(tmp_path / "w.pth"), "--out", str(tmp_path / "m.onnx")])
