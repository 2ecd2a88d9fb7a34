"""Knowledge distillation as DeiT (Touvron et al. 2021, "Training data-efficient image transformers & distillation
through attention", Sec. 5): a frozen teacher, and DeiT's soft and hard distillation losses.

The teacher is one of our models (a run's ``.ckpt``, or a name and a weights file) or any timm architecture (a
timm-format file), loaded once, frozen, in eval mode, run without gradients. It lives outside the student's module
tree (``Teacher`` is no ``nn.Module`` attribute of it): not in the student's ``state_dict`` nor its checkpoints, not
in its optimizer, not averaged by the EMA, not wrapped by DDP. Lightning-free: torch, and timm for a timm teacher.

With a distilled student (``deit_*_distilled``, ``model.distilled=true``) the class head learns the labels and the
distillation head the teacher (DeiT); with one head, that head learns ``(1 - alpha) * label loss + alpha * KD``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit_exp.errors import ConfigError
from vit_exp.rules import DISTILL_KINDS

log = logging.getLogger(__name__)

KINDS = DISTILL_KINDS  # "soft", "hard": defined with the config rules, which must not import torch


def soft_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(teacher / tau) || softmax(student / tau)) * tau^2, as DeiT's ``DistillationLoss`` computes it:
    summed over the batch and the classes, then divided by their number (B * C), not by the batch alone."""
    kl = F.kl_div(F.log_softmax(student / tau, dim=-1), F.log_softmax(teacher / tau, dim=-1), reduction="sum",
                  log_target=True)  # fmt: skip
    return kl * (tau * tau) / student.numel()


def hard_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the teacher's decision (its argmax) as the label: DeiT's hard-label distillation."""
    return F.cross_entropy(student, teacher.argmax(dim=-1))


class Teacher:
    """A frozen classifier in eval mode, called without gradients, on the student's (normalised) input.

    Args:
        model: The teacher network; its parameters are frozen here.
        name: What it is, for messages.
        renormalise: ``(scale, shift)`` per channel that turn the student's normalised input into the teacher's
            (another mean/std); None when both use the same.
    """

    def __init__(self, model: nn.Module, name: str, renormalise: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.renormalise = renormalise

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        if self.renormalise is not None:
            self.renormalise = tuple(t.to(device) for t in self.renormalise)  # type: ignore[assignment]
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) in float32 for the student's input batch ``x`` (B, C, H, W)."""
        dtype = next(self.model.parameters()).dtype  # the student may run bf16-true; the teacher keeps its own
        if self.renormalise is not None:
            x = x * self.renormalise[0] + self.renormalise[1]
        return self.model(x.to(dtype)).float()

    def __deepcopy__(self, memo: dict[int, Any]) -> Teacher:
        # Frozen, so copies of the student (the EMA's AveragedModel, FSDP's test copy) share it, not a copy each.
        return self


@dataclass
class Distillation:
    """DeiT's distillation loss: ``(1 - alpha) * criterion(class logits, target) + alpha * KD(distillation logits,
    teacher logits)``, KD the ``soft`` (temperature ``tau``) or ``hard`` loss."""

    teacher: Teacher
    kind: str = "hard"
    alpha: float = 0.5
    tau: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"distill.kind={self.kind} is not one of {', '.join(KINDS)}; set e.g. distill.kind=hard")

    def loss(
        self,
        outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        x: torch.Tensor,
        target: torch.Tensor,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The training loss of a batch: the student's ``outputs`` (class and distillation logits, or one tensor
        for both) on input ``x`` (what the teacher sees too, Mixup included), against ``target``."""
        cls, dist = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        teacher = self.teacher(x)
        dist = dist.float()
        kd = (
            soft_distillation_loss(dist, teacher, self.tau)
            if self.kind == "soft"
            else hard_distillation_loss(dist, teacher)
        )
        return (1 - self.alpha) * criterion(cls.float(), target) + self.alpha * kd


# ---- loading the teacher -----------------------------------------------------------------------------------------


def load_teacher(
    checkpoint: str | Path,
    num_classes: int,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    name: str | None = None,
) -> Teacher:
    """Build the teacher once: one of our models or a timm architecture, with the weights of ``checkpoint``.

    Args:
        checkpoint: A run's ``.ckpt`` (its architecture comes with it; ``name`` may be null), or a weights file
            (.pth, .safetensors, .npz) of the architecture ``name``.
        num_classes: The data's classes; the teacher's head must have as many.
        img_size: The student's input resolution (a ViT teacher's position embedding is resampled to it).
        mean: The student's input normalisation (``std`` too), to map its batches onto the teacher's.
        name: One of our models (``vit_base_patch16_224``, a family) or a timm architecture (``regnety_160``).

    Raises:
        ConfigError: no file there, an unknown name, a head of another number of classes, or weights that do not
            fit the architecture.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise no_teacher(checkpoint)
    if name is None or _is_ours(name):
        model, label, preprocessing = _our_teacher(path, name, num_classes, img_size)
    else:
        model, label, preprocessing = _timm_teacher(path, name, num_classes)
    log.info("distillation teacher: %s from %s", label, path)
    return Teacher(model, label, _renormalise((mean, std), preprocessing))


def no_teacher(checkpoint: str | Path) -> ConfigError:
    return ConfigError(f"distill.teacher.checkpoint={checkpoint} is not a file; point it at the teacher's weights (a "
                       "run's checkpoints/best.ckpt, or a .pth / .safetensors file)")  # fmt: skip


def _is_ours(name: str) -> bool:
    from vit_exp.models import resolve_spec

    try:
        resolve_spec(name)
    except ValueError:
        return False
    return True


def _classes_error(path: Path, found: int, wanted: int) -> ConfigError:
    return ConfigError(
        f"distill.teacher.checkpoint={path} has a head of {found} classes but this data has {wanted}; distil from a "
        "teacher trained on these classes (or fine-tune it on them first)"
    )


def _our_teacher(
    path: Path, name: str | None, num_classes: int, img_size: int
) -> tuple[nn.Module, str, tuple[Sequence[float], Sequence[float]]]:
    from vit_exp.checkpoints import checkpoint_config, load_weights
    from vit_exp.models import create_model, load_state_dict_file
    from vit_exp.models.checkpoint import load_state_dict
    from vit_exp.models.spec import OVERRIDABLE

    if name is None:  # a run of ours: its architecture is stored with it
        model_cfg = dict(checkpoint_config(path)["model"])
        if model_cfg["num_classes"] != num_classes:
            raise _classes_error(path, model_cfg["num_classes"], num_classes)
        # what the architecture is (not how it was built: pretrained, grad_checkpointing), at the student's size
        args = {k: v for k, v in model_cfg.items() if k in OVERRIDABLE or k in ("patch_size", "num_classes")}
        model = create_model(model_cfg["name"], **{**args, "img_size": img_size})
        load_weights(model, path)  # the EMA when the run kept one, as eval.py reads it
    else:
        model = create_model(name, num_classes=num_classes, img_size=img_size)
        try:
            sd = load_state_dict_file(path, model)
        except ValueError as e:
            raise ConfigError(f"distill.teacher.checkpoint={path}: {e}") from None
        head = sd.get("head.weight")
        if head is not None and head.shape[0] != num_classes:
            raise _classes_error(path, head.shape[0], num_classes)
        try:
            load_state_dict(model, sd, path)
        except ValueError as e:
            raise ConfigError(f"distill.teacher.name={name}: {e}") from None
    pre = model.spec.preprocessing
    return model, model.variant_name, (pre.mean, pre.std)


def _timm_teacher(
    path: Path, name: str, num_classes: int
) -> tuple[nn.Module, str, tuple[Sequence[float], Sequence[float]]]:
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"distill.teacher.name={name} is not one of our models, and timm (for other architectures) is not "
            "installed; pip install timm, or name one of vit_exp.models.list_models()"
        ) from None
    if not timm.is_model(name):
        raise ConfigError(
            f"distill.teacher.name={name} is neither one of our models nor a timm architecture; name e.g. "
            "regnety_160 (timm.list_models()) or vit_base_patch16_224 (vit_exp.models.list_models())"
        )
    from vit_exp.models import load_state_dict_file

    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    sd = load_state_dict_file(path)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    for classifier in [classifiers] if isinstance(classifiers, str) else classifiers:
        weight = sd.get(f"{classifier}.weight")
        if weight is not None and weight.shape[0] != num_classes:
            raise _classes_error(path, weight.shape[0], num_classes)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise ConfigError(f"distill.teacher.checkpoint={path} does not fit timm's {name}: {first[0].strip()}") from None
    cfg = model.pretrained_cfg
    return model, f"timm {name}", (cfg.get("mean"), cfg.get("std"))


def _renormalise(
    student: tuple[Sequence[float], Sequence[float]], teacher: tuple[Sequence[float], Sequence[float]]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) with ``x_teacher = x * scale + shift`` for an input normalised by the student's mean/std; None
    when the two normalisations are the same (or the teacher's is unknown)."""
    (s_mean, s_std), (t_mean, t_std) = student, teacher
    if t_mean is None or t_std is None or (tuple(s_mean), tuple(s_std)) == (tuple(t_mean), tuple(t_std)):
        return None
    s_mean, s_std, t_mean, t_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                                    for v in (s_mean, s_std, t_mean, t_std))  # fmt: skip
    return s_std / t_std, (s_mean - t_mean) / t_std
