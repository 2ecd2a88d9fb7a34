"""Export a ViT to ONNX or ``torch.export``, each checked against the eager model on the same input.

    python -m vit_exp.export --ckpt outputs/DATE/TIME/checkpoints/best.ckpt --format onnx --out vit.onnx
    python -m vit_exp.export --model vit_base_patch16_384 --ckpt jx_vit_base_p16_384-83fb41ba.pth --out vit.onnx

A checkpoint written by train.py stores its run config: the model is rebuilt from it, no --model needed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
MAX_BATCH = 4096


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    c, h, w = model.spec.preprocessing.input_size
    return torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, path: str | Path, opset: int = 18) -> float:
    """Write an ONNX graph with a dynamic batch axis and return its max abs difference from eager
    (run by onnxruntime when installed, else only the graph is checked by ``onnx.checker``)."""
    model = model.eval()
    x = _example(model)
    # The torch.export-based exporter (needs onnxscript); the TorchScript one is deprecated.
    torch.onnx.export(
        model,
        (x,),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
        opset_version=opset,
        verbose=False,
    )
    try:
        import onnxruntime as ort
    except ImportError:
        import onnx

        onnx.checker.check_model(str(path))
        log.warning("onnxruntime is not installed: checked the graph, not its outputs")
        return float("nan")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _example(model, batch=3)  # another batch size than traced: the batch axis is dynamic
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        return (got - model(x)).abs().max().item()


def export_program(model: nn.Module, path: str | Path) -> float:
    """Save a ``torch.export`` program (.pt2) with a dynamic batch; return its max abs difference from eager
    after loading it back."""
    model = model.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(model, (_example(model),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    x = _example(model, batch=3)
    with torch.no_grad():
        return (loaded(x) - model(x)).abs().max().item()


def main(argv: list[str] | None = None) -> float:
    from vit_exp.models import create_model, resolve_spec

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="variant or family name, e.g. vit_base_patch16_384; not needed for our .ckpt")
    p.add_argument(
        "--ckpt",
        help="local checkpoint: .pth, .npz, .safetensors, or a .ckpt written by train.py (a file, or the directory "
        "of a sharded FSDP checkpoint)",
    )
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--no-ema", action="store_true", help="a run trained with an EMA: export the trained weights")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--format", choices=["onnx", "torch"], default="onnx")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.model:
        from vit_exp.checkpoints import load_weights

        try:
            model = create_model(resolve_spec(args.model, img_size=args.img_size, num_classes=args.num_classes))
        except ValueError as e:
            p.error(str(e))
        if args.ckpt:
            load_weights(model, args.ckpt, use_ema=not args.no_ema)  # published, or a run's file or directory
    elif args.ckpt:
        from vit_exp.errors import ConfigError
        from vit_exp.predict import load_run

        try:
            model, _ = load_run(args.ckpt, use_ema=not args.no_ema)
        except ConfigError as e:
            p.error(f"{e} (or name the architecture with --model)")
    else:
        p.error("pass --ckpt (a .ckpt written by train.py), or --model (with --ckpt for published weights)")
    diff = (export_onnx if args.format == "onnx" else export_program)(model, args.out)
    print(f"wrote {args.out} ({args.format}); max |exported - eager| = {diff:.3g}")
    return diff


if __name__ == "__main__":
    main()
