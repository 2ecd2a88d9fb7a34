"""What the GPU check (``vit_exp.device_check``) measures, at what sizes and in what time: the parts' arguments and
time boxes for a real check on a lent GPU and for the CPU dry run that the tests run, and the modules the parts
import (the install names any the machine lacks). The one place to change when a part must fit a shorter lease."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    """The sizes of a real check and of a dry run."""

    pytest: list[str]
    benches: list[list[str]]
    checkpoint: list[str]
    train_model: list[str]
    img_size: int
    images: int
    image_side: int
    batch: int
    steps: int
    workers: int
    hw: list[str]
    boxes: dict[str, int]


B16 = ["--model", "vit_base_patch16_224", "--batch-size", "256", "--precision", "bf16"]
REAL = Sizes(
    pytest=["-m", "gpu", "tests"],
    benches=[
        B16,  # eager alone first: its figures (and timm's) survive a compiled run that overruns its box
        [*B16, "--compile"],
        ["--model", "vit_base_patch16_384", "--batch-size", "64", "--precision", "bf16", "--no-timm"],
        ["--model", "vit_large_patch16_224", "--batch-size", "128", "--precision", "bf16", "--no-timm"],
        [*B16, "--compile", "--compile-step", "--no-timm"],  # does compiling the loss and AdamW step pay?
    ],
    # does the background checkpoint writer pay where the step runs on a GPU? (~1 GB: B/16's weights and AdamW's)
    checkpoint=[*B16, "--steps", "30", "--every", "10", "--rounds", "2"],
    train_model=["model=vit_base_p16"],
    img_size=224,
    images=6000,
    image_side=320,
    batch=256,
    steps=300,
    workers=15,
    hw=["hw=gpu", "compile=true"],
    # seconds; the parts run in this order (the goals' figures first) and the whole stops at 480 s (--budget):
    # what is left at the end (the larger models) is skipped, not the goals' figures
    boxes={
        "install": 60,
        "bench0": 60,
        "bench1": 170,
        "jpegs": 40,
        "host": 100,
        "device": 100,
        "pytest": 90,  # a cold compile of a ViT-S (test_cuda) and a short Lightning run (test_host_sync)
        "checkpoint": 60,
        "bench4": 150,
        "bench2": 40,
        "bench3": 40,
    },
)
DRY = Sizes(
    pytest=["-m", "gpu", "tests/test_device_check.py"],
    benches=[
        ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--iters", "1", "--rounds", "1"]
        + ["--warmup", "1", "--device", "cpu", "--no-timm"]
    ],
    checkpoint=["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--steps", "2"]
    + ["--every", "1", "--rounds", "1", "--device", "cpu"],
    train_model=["model=vit_test"],
    img_size=32,
    images=40,
    image_side=40,
    batch=8,
    steps=4,
    workers=0,
    hw=["hw=cpu"],
    boxes={"install": 60, "bench0": 60, "jpegs": 30, "host": 90, "device": 90, "pytest": 60, "checkpoint": 60},
)


# What the parts import, by module name: the image's (Lightning, timm, rich, ...) and the carried wheels'.
NEEDED = ("hydra", "omegaconf", "lightning", "torchmetrics", "timm", "rich", "PIL", "sklearn", "matplotlib",
          "safetensors", "torchcodec", "webdataset", "braceexpand")  # fmt: skip
