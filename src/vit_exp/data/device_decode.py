"""``data.decode=device``: loader workers read JPEG bytes, the accelerator decodes and augments whole batches.

At thousands of images a second, decoding JPEGs on the host needs more cores than a machine has (~1.4 ms per
ImageNet-sized JPEG with libjpeg-turbo). Here the work is split in two halves:

- In the loader worker, ``ReadEncoded`` (the datasets' transform) reads only the file's header and its bytes,
  and draws the image's random crop and flip with ``TrainTransform.draw``: the same draws, from the same
  per-sample seed (``vit_exp.data.order.SeededSamples``), as host decoding makes, so an exact resume holds and
  a sample gets the same crop box either way. ``collate_encoded`` packs a batch's bytes into one tensor.
- On the device (``ViTDataModule.on_after_batch_transfer``), ``DeviceDecode`` decodes the batch with one
  ``decode_jpeg(list, device=...)`` call (``jpeg_decoder``: TorchCodec's, else torchvision's; nvJPEG on CUDA; on
  a CPU the same call decodes on the host with libjpeg-turbo, which is what the tests run), then crops, resizes
  and flips (training) or resizes and center-crops (evaluation), and hands uint8 (N, 3, S, S) on to
  ``normalize`` as host decoding does.

Resizing is torchvision's antialiased tensor resize, one image at a time: ``decode_jpeg`` returns one tensor per
image, each of its own size, so a batched kernel (``roi_align`` over a padded batch) would need a copy per image
first anyway; the crop is then a free view, and the filter is the host path's own (torch's antialiased
bilinear/bicubic), where ``roi_align`` would change the augmentation's resampling to a box-averaged bilinear.

Files the device cannot decode (PNG and other formats, CMYK JPEGs) are decoded in the worker instead and travel
decoded (``ReadEncoded.num_host_decoded`` counts them); JPEGs that turn out corrupt at decode time are replaced by
the next image of the batch and counted (``strict``: stop, naming the file), as the sources do on the host.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as F2

from vit_exp.data._bad_images import BadImages
from vit_exp.data.transforms import INTERPOLATIONS, EvalTransform, TrainTransform, load_image, to_uint8_tensor
from vit_exp.errors import ConfigError

# PIL modes of the JPEGs sent to the device: YCbCr ("RGB") and greyscale; nvJPEG has no CMYK/YCCK output.
DEVICE_MODES = ("RGB", "L")
# What torch's tensor resize offers (PIL's box, hamming and lanczos filters have no tensor kernel).
TENSOR_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")

log = logging.getLogger(__name__)

JpegDecoder = Callable[..., Any]  # (uint8 tensor or a list of them, device=...) -> RGB uint8 (3, H, W) tensor(s)


@functools.cache
def jpeg_decoder(device_type: str = "cpu") -> tuple[str, JpegDecoder]:
    """(name, decode) of the batched JPEG decoder for ``device_type`` ("cpu" or "cuda"): TorchCodec's, which
    torchvision 0.29 deprecated its image decoders for; torchvision's where TorchCodec is not installed or does not
    work on this device (its wheels from 0.12 on need torch >= 2.11, and torch_xla's environment has 2.9).

    Chosen once per process and device type, by decoding a small JPEG with it there: a TorchCodec that imports but
    cannot load its libraries, or finds no nvJPEG, fails here rather than on the first batch.
    """
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buffer, "JPEG")
    probe = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        from torchcodec.decoders import decode_jpeg as codec_decode

        decode: JpegDecoder = functools.partial(codec_decode, mode="RGB")
        decode([probe], device=device_type)
        return "torchcodec", decode
    except Exception as error:  # noqa: BLE001 -- ImportError, a library that fails to load (OSError, RuntimeError)
        log.info("data.decode=device: TorchCodec cannot decode on %s (%s); using torchvision.io", device_type, error)
    import warnings

    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as vision_decode

    def decode_with_torchvision(data: Any, device: Any = "cpu") -> Any:
        with warnings.catch_warnings():  # deprecated in favour of TorchCodec, which is what failed above
            warnings.simplefilter("ignore", DeprecationWarning)
            return vision_decode(data, mode=ImageReadMode.RGB, device=device)

    return "torchvision", decode_with_torchvision


class EncodedImage:
    """One sample as a worker sends it: JPEG bytes (uint8, 1-D) or a host-decoded uint8 (3, H, W) image, with its
    crop box (left, top, width, height; None: evaluation) and flip, and its file name for messages."""

    __slots__ = ("box", "data", "flip", "name")

    def __init__(self, data: torch.Tensor, box: tuple[int, int, int, int] | None, flip: bool, name: str) -> None:
        self.data, self.box, self.flip, self.name = data, box, flip, name

    @property
    def encoded(self) -> bool:
        return self.data.dim() == 1


class ReadEncoded:
    """The datasets' transform under ``decode=device``: lazily opened PIL image -> ``EncodedImage``.

    A class (not a closure) so that it pickles for loader workers and torch_xla's launch.

    Args:
        train: The training transform whose ``draw`` gives each image's crop and flip; None for evaluation.
    """

    def __init__(self, train: TrainTransform | None = None) -> None:
        self.train = train
        # Shared memory: each loader worker holds its own copy of this object (as BadImages counts).
        self._host_decoded = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def num_host_decoded(self) -> int:
        """Images decoded in the workers instead of on the device (not JPEG, or CMYK), over all workers."""
        return int(self._host_decoded)

    def __call__(self, img: Image.Image) -> EncodedImage:
        width, height = img.size  # from the header: nothing is decoded yet
        box, flip = self.train.draw(width, height) if self.train is not None else (None, False)
        name = getattr(img, "filename", "") or ""
        fp = getattr(img, "fp", None)
        if img.format == "JPEG" and img.mode in DEVICE_MODES and fp is not None:
            fp.seek(0)
            data = fp.read()
            img.close()
            return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip, name)
        self._host_decoded += 1
        return EncodedImage(to_uint8_tensor(load_image(img)), box, flip, name)


class EncodedBatch:
    """A batch of ``EncodedImage``: the JPEG bytes packed in one tensor (one shared-memory block from a worker, not
    one per image), the host-decoded images, and the crop boxes and flips (host tensors: read without a sync).

    Lightning moves batches with their ``to``: it records the device and moves the decoded images only, since
    the decoders read the encoded bytes from host memory whatever the device.
    """

    def __init__(
        self,
        data: torch.Tensor,
        lengths: torch.Tensor,
        decoded: list[torch.Tensor],
        encoded: torch.Tensor,
        boxes: torch.Tensor | None,
        flips: torch.Tensor,
        names: list[str],
        device: torch.device | None = None,
    ) -> None:
        self.data, self.lengths, self.decoded, self.encoded = data, lengths, decoded, encoded
        self.boxes, self.flips, self.names = boxes, flips, names
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.encoded)

    def to(self, device: torch.device | str, *args: Any, **kwargs: Any) -> EncodedBatch:
        device = torch.device(device)
        decoded = [image.to(device, *args, **kwargs) for image in self.decoded]
        return EncodedBatch(self.data, self.lengths, decoded, self.encoded, self.boxes, self.flips, self.names, device)


def collate_encoded(samples: Sequence[tuple[EncodedImage, Any]]) -> tuple[EncodedBatch, Any]:
    """The loaders' ``collate_fn`` under ``decode=device``: (EncodedBatch, collated targets)."""
    images = [image for image, _ in samples]
    encoded = [image.data for image in images if image.encoded]
    data = torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8)
    boxes = None if images[0].box is None else torch.tensor([image.box for image in images], dtype=torch.int64)
    batch = EncodedBatch(
        data,
        torch.tensor([len(e) for e in encoded], dtype=torch.int64),
        [image.data for image in images if not image.encoded],
        torch.tensor([image.encoded for image in images]),
        boxes,
        torch.tensor([image.flip for image in images]),
        [image.name for image in images],
    )
    return batch, default_collate([target for _, target in samples])


class DeviceDecode:
    """The device half: ``EncodedBatch`` -> uint8 (N, 3, img_size, img_size) on the batch's device.

    Training batches (those with crop boxes) are cropped, resized to ``img_size`` and flipped as
    ``TrainTransform`` does; evaluation batches are resized (shorter side to ``floor(img_size / crop_pct)``) and
    center-cropped as ``EvalTransform`` does. On CUDA the JPEGs are decoded there; on other devices (CPU, XLA) on
    the host, then moved.

    Args:
        img_size: Output side.
        crop_pct: Evaluation center-crop fraction.
        interpolation: "nearest", "bilinear" or "bicubic" (torch's antialiased tensor resize).
        strict: Stop at a JPEG that cannot be decoded instead of replacing it with the batch's next image.
    """

    def __init__(self, img_size: int, crop_pct: float, interpolation: str, strict: bool = False) -> None:
        if interpolation not in TENSOR_INTERPOLATIONS:
            raise ConfigError(
                f"data.decode=device resizes with torch's tensor kernels, which have no {interpolation!r} filter; "
                f"set data.interpolation to one of {', '.join(TENSOR_INTERPOLATIONS)}, or data.decode=host"
            )
        self.img_size = img_size
        self.scale_size = EvalTransform(img_size, crop_pct, interpolation).scale_size
        self.interpolation = INTERPOLATIONS[interpolation]
        self.bad = BadImages(strict)
        self.decoder = ""  # the library that decoded the JPEGs ("torchcodec" or "torchvision"), once one did
        self.images = 0  # decoded and augmented so far (this process), for the end-of-stage log line

    @property
    def num_skipped(self) -> int:
        """JPEGs that failed to decode and were replaced, so far (this process)."""
        return self.bad.num_skipped

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        device, self.images = batch.device, self.images + len(batch)
        on = device if device.type == "cuda" else torch.device("cpu")  # nvJPEG, else libjpeg-turbo on the host
        encoded = self._decode(list(torch.split(batch.data, batch.lengths.tolist())), batch, on)
        decoded = iter([image.to(on) for image in batch.decoded])
        images = [next(encoded) if is_encoded else next(decoded) for is_encoded in batch.encoded.tolist()]
        if batch.boxes is None:
            out = [self._eval(image) for image in images]
        else:
            flips = batch.flips.tolist()
            out = [self._train(image, box, flip) for image, box, flip in zip(images, batch.boxes.tolist(), flips)]
        return torch.stack(out).to(device)

    def _train(self, image: torch.Tensor, box: list[int], flip: bool) -> torch.Tensor:
        left, top, w, h = box
        if top + h > image.shape[-2] or left + w > image.shape[-1]:  # a replaced image: its box is another's
            left, top, w, h = 0, 0, image.shape[-1], image.shape[-2]
        x = F2.resize(image[:, top : top + h, left : left + w], [self.img_size] * 2, self.interpolation, antialias=True)
        return x.flip(-1) if flip else x

    def _eval(self, image: torch.Tensor) -> torch.Tensor:
        x = F2.resize(image, [self.scale_size], self.interpolation, antialias=True)
        return F2.center_crop(x, [self.img_size] * 2)

    def _decode(self, encoded: list[torch.Tensor], batch: EncodedBatch, device: torch.device) -> Any:
        """An iterator over the batch's decoded JPEGs, in order; an undecodable one is replaced by the next."""
        if not encoded:
            return iter(())
        self.decoder, decode_jpeg = jpeg_decoder(device.type)
        try:
            return iter(decode_jpeg(encoded, device=device))
        except RuntimeError:
            pass  # one bad file fails the whole call: find it (rare, so one at a time)
        names = [name for name, is_encoded in zip(batch.names, batch.encoded.tolist()) if is_encoded]
        images: list[torch.Tensor | None] = []
        for data, name in zip(encoded, names):
            try:
                images.append(decode_jpeg(data, device=device))
            except RuntimeError as error:
                self.bad.skip(name or "(bytes)", error)
                images.append(None)
        good = [i for i, image in enumerate(images) if image is not None]
        if not good:
            raise ValueError(f"no JPEG of this batch can be decoded ({', '.join(names[:3])}, ...); check the files")
        n = len(images)
        return iter([images[min(good, key=lambda g: (g - i) % n)] for i in range(n)])
