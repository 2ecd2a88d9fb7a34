"""On a CUDA GPU: bf16 parity with timm, the compiled training step, and the benchmark. Skipped without one
(`python -m pytest -m gpu` runs only these on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from tests.models.conftest import timm_model
from vit_exp.models import create_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_logits_match_timm_on_the_same_weights(tmp_path) -> None:
    torch.manual_seed(0)
    ref = timm_model("vit_base_patch16_224").cuda()
    path = tmp_path / "b16.pth"
    torch.save(ref.state_dict(), path)
    ours = create_model("vit_base_patch16_224", pretrained=path).cuda().eval()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ours(x).float(), ref(x).float()
    # Both run the same kernels (SDPA's flash path, cuBLAS): bf16 rounding, not a different computation.
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.875


def test_compiled_training_step_has_no_graph_break_and_finite_gradients() -> None:
    torch.manual_seed(0)
    model = create_model("vit_small_augreg_patch16_224", img_size=64, num_classes=10).cuda()
    step = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    x, y = torch.randn(4, 3, 64, 64, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(step(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bench_measures_both_implementations_on_the_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    from vit_exp.bench import main

    results = main(["--model", "vit_tiny_patch16_224", "--batch-size", "8", "--iters", "2", "--rounds", "1"])
    assert [r.impl.split()[0] for r in results] == ["vit_exp", "timm"]
    assert all(r.peak_mem_gib and r.peak_mem_gib > 0 for r in results)
    assert "bf16" in capsys.readouterr().out
