"""Top-k classes of image files: ``python predict.py ckpt_path=... images=<folder, file or [list]>``.

The model is a checkpoint of ours (it stores its run config, so the architecture is rebuilt from it, and the
class names of its data) or published weights (``model=<family> model.pretrained=<file>``). Images go through
the model's evaluation preprocessing: ``build_eval_transform`` (resize, center crop) and ``normalize`` with
the mean and std it was trained with. Class names: a text file (``class_names=``) when given, else those stored
in the checkpoint, else ImageNet's for a 1000-class head of weights not trained here (published weights;
torchvision ships the names), else the class indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vit_exp.checkpoints import checkpoint_hparams, load_weights
from vit_exp.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from vit_exp.data.transforms import Transform
    from vit_exp.models import VisionTransformer

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (from torchvision's metadata; no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_run(path: str | Path, use_ema: bool = True) -> tuple[VisionTransformer, dict[str, Any]]:
    """The model of a checkpoint written by ``train.py``, rebuilt from its stored config, in eval mode; with the
    EMA of its weights if it has one, unless ``use_ema`` is False (``vit_exp.checkpoints.load_weights``).

    Returns:
        (model, the checkpoint's hyper-parameters: ``config``, ``class_names``, ``num_classes``, ...).

    Raises:
        ConfigError: no such file (or sharded checkpoint directory), or one that stores no run config (e.g.
            published weights).
    """
    from vit_exp.models import create_model

    hparams = checkpoint_hparams(path)
    model = create_model(**{**hparams["config"]["model"], "pretrained": None})  # weights: the checkpoint's
    load_weights(model, path, use_ema=use_ema)  # a .ckpt file or a sharded (FSDP) directory
    return model.eval(), hparams


def eval_preprocessing(
    model: VisionTransformer, data_cfg: dict[str, Any] | None = None
) -> tuple[Transform, tuple[float, ...], tuple[float, ...]]:
    """(uint8 transform, mean, std) the model is evaluated with: the data config's values where it set them
    (as the run did), else those of its ``spec`` (its family at its resolution)."""
    from vit_exp.data.transforms import build_eval_transform
    from vit_exp.models import PREPROCESSING

    own = model.spec.preprocessing
    chosen = {k: (data_cfg or {}).get(k) if (data_cfg or {}).get(k) is not None else getattr(own, k)
              for k in PREPROCESSING}  # fmt: skip
    transform = build_eval_transform(own.img_size, chosen["crop_pct"], chosen["interpolation"])
    return transform, tuple(chosen["mean"]), tuple(chosen["std"])


def resolve_class_names(
    num_classes: int,
    stored: Sequence[str] | None = None,
    file: str | Path | None = None,
    published: bool = False,
) -> list[str]:
    """Names for a head of ``num_classes``: a text file (one per line) when given, else the names stored with
    the model, else ImageNet's for a 1000-class head of ``published`` weights, else the indices.

    Raises:
        ConfigError: the file's or the stored names' count differs from the head's.
    """
    if file is not None:
        names = [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
        source = str(file)
    elif stored:
        names, source = list(stored), "the checkpoint"
    elif published and num_classes == IMAGENET_CLASSES:
        return imagenet_class_names()
    else:
        return [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{source} has {len(names)} class names but the model has {num_classes} classes")
    return names


def list_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of a folder (recursively, sorted), a file, or a list of either.

    Raises:
        ConfigError: a path that does not exist, no image found, or a file that is no image.
    """
    from vit_exp.data.folder import IMG_EXTENSIONS

    items = [images] if isinstance(images, (str, Path)) else list(images)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"images: {item} does not exist; pass a folder, an image file, or a list [a.jpg,b.png]")
    if not files:
        raise ConfigError(f"images: no image files ({', '.join(IMG_EXTENSIONS)}) in {', '.join(map(str, items))}")
    from PIL import Image, UnidentifiedImageError

    for path in files:  # each file's header (PIL opens lazily): no model is loaded for a list it cannot read
        try:
            Image.open(path).close()
        except (UnidentifiedImageError, OSError) as e:
            raise ConfigError(f"images: {path} is not an image PIL can read ({e}); pass image files only") from None
    return files


@dataclass
class Predictor:
    """A model with its evaluation preprocessing and class names: images in, top-k (name, probability) out."""

    model: VisionTransformer
    class_names: list[str]
    transform: Transform
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, class_names_file: str | Path | None = None, use_ema: bool = True
    ) -> Predictor:
        """From a checkpoint written by ``train.py``: its architecture, weights (their EMA if it has one, unless
        ``use_ema`` is False), preprocessing and class names."""
        model, hparams = load_run(path, use_ema)
        data_cfg, names = hparams["config"].get("data"), hparams.get("class_names")
        return cls.from_model(model, data_cfg, names, class_names_file, published=False)

    @classmethod
    def from_model(
        cls,
        model: VisionTransformer,
        data_cfg: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        class_names_file: str | Path | None = None,
        published: bool = True,
    ) -> Predictor:
        """From a built model (e.g. ``create_model(..., pretrained=FILE)``), with its spec's preprocessing unless
        ``data_cfg`` sets it; ``published``: weights not trained here, ImageNet's names for a 1000-class head
        that has none of its own."""
        names = resolve_class_names(model.num_classes, class_names, class_names_file, published)
        return cls(model.eval(), names, *eval_preprocessing(model, data_cfg))

    def probabilities(self, images: Sequence[str | Path | Image.Image], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (N, num_classes) of images (paths or PIL images), ``batch_size`` at a time."""
        import torch

        from vit_exp.data.transforms import normalize

        device = next(self.model.parameters()).device
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.stack([self._pixels(img) for img in images[i : i + batch_size]]).to(device)
                out.append(self.model(normalize(x, self.mean, self.std)).float().softmax(dim=-1).cpu())
        return torch.cat(out)

    def _pixels(self, image: str | Path | Image.Image) -> torch.Tensor:
        """One image through the preprocessing; a file whose header reads but whose data does not (a truncated or
        corrupt JPEG) named in a one-line error."""
        try:
            return self.transform(image)
        except OSError as e:
            if isinstance(image, (str, Path)):
                raise ConfigError(f"images: {image} cannot be decoded ({e}); replace or remove the file") from None
            raise

    def __call__(
        self, images: Sequence[str | Path | Image.Image], topk: int = 5, batch_size: int = 32
    ) -> list[list[tuple[str, float]]]:
        """The ``topk`` (class name, probability) pairs of each image, most likely first."""
        probs, index = self.probabilities(images, batch_size).topk(min(topk, len(self.class_names)), dim=-1)
        return [[(self.class_names[k], float(p)) for p, k in zip(ps, ks)] for ps, ks in zip(probs, index.tolist())]


def format_predictions(path: str | Path, top: Sequence[tuple[str, float]]) -> str:
    """The file name, then one line per class: rank, probability, name."""
    return "\n".join([str(path)] + [f"  {i}. {100 * p:6.2f}%  {name}" for i, (name, p) in enumerate(top, 1)])


def main(cfg: DictConfig) -> list[list[tuple[str, float]]]:
    """``python predict.py``: print the top-k classes of every image; return them.

    Raises:
        ConfigError: no model given, no images, an image that cannot be decoded, or class names that do not fit.
    """
    if OmegaConf.is_missing(cfg, "images") or not cfg.images:
        raise ConfigError("which images? pass images=<folder>, images=<file> or images=[a.jpg,b.png]")
    if not cfg.get("ckpt_path") and not cfg.model.get("pretrained"):
        raise ConfigError(
            "which model? pass ckpt_path=outputs/DATE/TIME/checkpoints/best.ckpt (a run of ours) or "
            "model=<family> res=<size> model.pretrained=<weights file> (published weights)"
        )
    import torch

    from vit_exp.checks import check_values

    check_values(cfg)  # use_ema, and what predict.yaml shares with train.yaml
    files = list_images(OmegaConf.to_object(cfg.images) if OmegaConf.is_list(cfg.images) else cfg.images)
    if cfg.get("ckpt_path"):
        predictor = Predictor.from_checkpoint(cfg.ckpt_path, cfg.get("class_names"), cfg.get("use_ema", True))
    else:
        from vit_exp.models import create_model

        try:
            model = create_model(**OmegaConf.to_container(cfg.model, resolve=True))
        except (FileNotFoundError, ValueError) as e:  # unknown model, missing or unfitting weights file
            raise ConfigError(str(e)) from None
        predictor = Predictor.from_model(model, class_names_file=cfg.get("class_names"))
    device = cfg.get("device") or "auto"
    predictor.model.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    log.info("%d images, %s, %d classes", len(files), predictor.model.variant_name, len(predictor.class_names))
    from vit_exp.hw import resume_gc

    resume_gc()
    results = predictor(files, topk=cfg.topk, batch_size=cfg.batch_size)
    for path, top in zip(files, results):
        print(format_predictions(path, top))
    return results
