import pytest
import torch

from vit_exp import export
from vit_exp.models import create_model


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_export_matches_eager(fmt, tmp_path):
    pytest.importorskip("onnx") if fmt == "onnx" else None
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=32, num_classes=10)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt2")
    diff = export.main(["--model", "vit_test", "--img-size", "32", "--num-classes", "10", "--ckpt", str(tmp_path / "m.pth"),
                        "--format", fmt, "--out", str(out)])
    assert out.stat().st_size > 0
    assert diff < 1e-4
