"""``data.decode=device`` on CPU: loader workers send JPEG bytes, ``on_after_batch_transfer`` decodes and augments.

On a CPU TorchCodec's (or torchvision's) ``decode_jpeg`` decodes with libjpeg-turbo, as PIL does, so the device path can be held to
the host path: training batches equal exactly (same crop and flip from the same per-sample seed; the test images
are small enough that the host path decodes them at full size), evaluation batches to 1 grey level (PIL's resize
against torch's antialiased tensor resize; decoding itself is equal).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT
from vit_exp.data import device_decode
from vit_exp.data.device_decode import EncodedBatch, jpeg_decoder
from vit_exp.data.transforms import normalize
from vit_exp.errors import ConfigError

SIZE = 16  # the default model's input (vit_test)


@pytest.fixture
def folder_module(image_folder, data_module):
    """folder_module(*overrides) -> a ViTDataModule over the image_folder fixture (3 classes, 32x24 JPEGs)."""

    def make(*overrides: str):
        dm = data_module("imagefolder", f"data.root={image_folder}", "data.num_classes=3", "data.batch_size=4",
                         *overrides)  # fmt: skip
        dm.setup("fit")
        return dm

    return make


def _first(loader) -> tuple:
    torch.manual_seed(0)  # the loader's order comes from the run's seed; fix it for both paths
    return next(iter(loader))


def test_train_batches_are_decoded_on_the_device_and_equal_the_host_path(folder_module):
    host, device = folder_module(), folder_module("data.decode=device")
    (x_host, y_host), (encoded, y_device) = _first(host.train_dataloader()), _first(device.train_dataloader())
    assert isinstance(encoded, EncodedBatch) and encoded.data.dtype == torch.uint8 and encoded.data.dim() == 1
    assert encoded.boxes.shape == (4, 4) and not encoded.decoded  # bytes only: nothing decoded in the loader
    assert torch.equal(y_host, y_device)

    x, _ = device.on_after_batch_transfer((encoded.to("cpu"), y_device), 0)
    assert x.shape == (4, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x, normalize(x_host, host.mean, host.std))  # same crop, flip, filter and normalisation
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean 0.5, std 0.5


def test_eval_batches_match_the_host_transform(folder_module, image_folder):
    host, device = folder_module(), folder_module("data.decode=device")
    x_host, _ = next(iter(host.val_dataloader()))
    encoded, _ = next(iter(device.val_dataloader()))
    assert encoded.boxes is None
    x = device.device_decode(encoded)
    assert x.dtype == torch.uint8 and x.shape == x_host.shape == (6, 3, SIZE, SIZE)
    # The decoders are the same library: equal pixels. The resize is PIL's on the host and torch's here.
    path = min((image_folder / "val").glob("*/*.JPEG"))
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(jpeg_decoder()[1](data), pil)
    diff = (x.int() - x_host.int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.05, (diff.max(), diff.float().mean())


def test_train_batches_are_a_function_of_the_seed_whatever_the_workers(folder_module):
    first = _first(folder_module("data.decode=device").train_dataloader())
    again = _first(folder_module("data.decode=device", "data.num_workers=2").train_dataloader())
    assert torch.equal(first[0].boxes, again[0].boxes) and torch.equal(first[0].flips, again[0].flips)
    assert torch.equal(first[0].data, again[0].data) and torch.equal(first[1], again[1])
    dm = folder_module("data.decode=device")
    assert torch.equal(dm.device_decode(first[0]), dm.device_decode(again[0]))


def test_png_and_cmyk_files_are_decoded_in_the_worker_and_counted(folder_module, image_folder, make_image):
    n01 = image_folder / "train" / "n01"
    make_image(seed=50).save(n01 / "n01_0.JPEG", "PNG")  # a PNG under a .JPEG name, as found in ImageNet
    make_image(seed=51).convert("CMYK").save(n01 / "n01_1.JPEG", "JPEG", quality=90)
    whole = "data.batch_size=12"  # the whole train split in one batch, both odd files included
    host, device = folder_module(whole), folder_module("data.decode=device", whole)
    (x_host, _), (encoded, _) = _first(host.train_dataloader()), _first(device.train_dataloader())
    read = device.datasets["train"].transform  # the ReadEncoded the loader workers ran
    assert read.num_host_decoded == 2 and len(encoded.decoded) == 2 and int(encoded.encoded.sum()) == 10
    assert torch.equal(device.device_decode(encoded), x_host)  # the host-decoded ones take the same crop


def test_a_corrupt_jpeg_is_replaced_by_the_next_image_and_counted(folder_module, image_folder):
    bad = image_folder / "train" / "n01" / "n01_1.JPEG"
    data = bad.read_bytes()
    bad.write_bytes(data[: 2 * len(data) // 3])  # the header still reads: only decoding finds it out
    device = folder_module("data.decode=device")
    encoded, _ = next(iter(device.val_dataloader()))  # val is intact: decode a train batch made by hand
    samples = [device.datasets["train"][i] for i in range(4)]  # n01_0 .. n01_3: the second is the bad one
    from vit_exp.data.device_decode import collate_encoded

    batch, _ = collate_encoded(samples)
    with pytest.warns(UserWarning, match="n01_1.JPEG"):
        x = device.device_decode(batch)
    assert x.shape == (4, 3, SIZE, SIZE) and device.device_decode.num_skipped == 1
    strict = folder_module("data.decode=device", "data.strict=true")
    with pytest.raises(ValueError, match="cannot read image .*n01_1.JPEG"):
        strict.device_decode(batch)
    assert encoded.boxes is None


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.decode=gpu"], "data.decode=gpu is not one of host, device"),
        (["data.decode=device", "data.train_aug.randaugment=rand-m9-n2"], "randaugment=null, or data.decode=host"),
        (["data.decode=device", "data.interpolation=lanczos", "data.train_aug=null"], "no .lanczos. filter"),
    ],
)
def test_settings_the_device_path_cannot_honour_are_config_errors(image_folder, data_module, overrides, match):
    from vit_exp.build import our_errors  # what the run does: Hydra's wrapper off, our one-line error

    with pytest.raises(ConfigError, match=match), our_errors():
        data_module("imagefolder", f"data.root={image_folder}", "data.num_classes=3", *overrides)


def test_check_values_names_a_bad_decode(tiny_cfg):
    from vit_exp.checks import check_values

    with pytest.raises(ConfigError, match="data.decode=cuda is not host or device; set e.g. data.decode=device"):
        check_values(tiny_cfg("data.decode=cuda"))


def test_train_py_runs_with_device_decoding(tmp_path: Path, write_jpeg) -> None:
    """``python train.py data=imagefolder data.decode=device debug=limit``: trains, validates and tests."""
    root = tmp_path / "jpegs"
    for split, per_class in (("train", 8), ("val", 3)):
        for c in range(3):
            for i in range(per_class):
                write_jpeg(root / split / f"c{c}" / f"{i}.jpg", width=40, height=30, seed=100 * c + i)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", "model=vit_test", "debug=limit", "data=imagefolder", f"data.root={root}",
           "data.num_classes=3", "data.batch_size=4", "data.num_workers=1", "data.decode=device",
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 10 and results["top1"] is not None
    # every image through the device path: 10 train batches of 4, the val split (9) 3 times (the sanity check,
    # 2 epochs), the test split once
    log_text = (run_dir / "cli.log").read_text()
    assert f"data.decode=device: 76 images decoded and augmented on the device (JPEGs by {jpeg_decoder()[0]};" in log_text


def test_encoded_batch_keeps_the_bytes_on_the_host_when_moved():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    batch = EncodedBatch(data, torch.tensor([len(data)]), [], torch.tensor([True]), None, torch.tensor([False]), [""])
    moved = batch.to(torch.device("meta"))
    assert moved.device.type == "meta" and moved.data is data  # decode_jpeg reads host memory on any device


@pytest.fixture
def jpegs(make_image, encode_jpeg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(JPEG bytes, PIL's RGB decoding of them) of a colour image, a greyscale one and a smaller colour one."""
    images = [make_image(56, 40, seed=1), make_image(56, 40, seed=2).convert("L"), make_image(48, 36, seed=3)]
    out = []
    for image in images:
        data = encode_jpeg(image)
        pil = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        out.append((torch.frombuffer(bytearray(data), dtype=torch.uint8), pil))
    return out


def test_torchcodec_decodes_where_it_is_installed(jpegs):
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 11):
        pytest.skip("TorchCodec's wheels need torch >= 2.11 (torch_xla's environment has 2.9): torchvision decodes")
    pytest.importorskip("torchcodec.decoders")
    name, decode = jpeg_decoder("cpu")
    assert name == "torchcodec"
    out = decode([data for data, _ in jpegs], device="cpu")
    assert all(torch.equal(a, pil) for a, (_, pil) in zip(out, jpegs, strict=True))  # greyscale: RGB, as PIL's


def test_torchvision_decodes_where_torchcodec_cannot(monkeypatch, jpegs):
    import builtins

    real_import = builtins.__import__

    def no_torchcodec(name, *args, **kwargs):
        if name.startswith("torchcodec"):
            raise ImportError("No module named 'torchcodec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchcodec)
    jpeg_decoder.cache_clear()
    try:
        name, decode = jpeg_decoder("cpu")
        data, pil = jpegs[0]
        assert name == "torchvision" and torch.equal(decode([data], device="cpu")[0], pil)
    finally:
        jpeg_decoder.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nvjpeg_decodes_a_batch_on_the_gpu_close_to_the_cpu_decoder(jpegs):
    encoded = [data for data, _ in jpegs]
    name, decode = jpeg_decoder("cuda")
    on_gpu, on_cpu = decode(encoded, device="cuda"), jpeg_decoder("cpu")[1](encoded, device="cpu")
    for gpu, cpu in zip(on_gpu, on_cpu, strict=True):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: torchvision's own test of its CUDA decoder
        # holds the two to a mean absolute difference < 2 and bounds no single pixel (edges differ most)
        diff = (gpu.cpu().float() - cpu.float()).abs()
        assert diff.mean() < 2, (name, diff.mean(), diff.max())
    data = torch.cat(encoded)
    batch = EncodedBatch(data, torch.tensor([len(e) for e in encoded]), [], torch.tensor([True] * 3), None,
                         torch.tensor([False] * 3), ["a", "b", "c"]).to("cuda")  # fmt: skip
    x = device_decode.DeviceDecode(img_size=32, crop_pct=1.0, interpolation="bicubic")(batch)
    assert x.device.type == "cuda" and x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
