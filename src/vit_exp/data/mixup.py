"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch, on the device.

Applied in the training step, after normalisation: targets become soft (class probabilities), which
``nn.CrossEntropyLoss`` (label smoothing included) and ``BCEWithLogitsLoss`` both accept.
"""

from __future__ import annotations

import torch
from torch import nn


class MixupCutmix(nn.Module):
    """Mix each batch with its reversed self: Mixup or CutMix per batch, as DeiT and timm do.

    Args:
        num_classes: Classes of integer targets (multi-hot float targets are mixed as they are).
        mixup_alpha: Beta(alpha, alpha) of the Mixup weight; 0 disables Mixup.
        cutmix_alpha: Beta(alpha, alpha) of the CutMix box area; 0 disables CutMix.
        prob: Probability of mixing a batch at all.
        switch_prob: With both enabled, probability of CutMix rather than Mixup.
    """

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        super().__init__()
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha == cutmix_alpha == 0:
            raise ValueError("MixupCutmix needs mixup_alpha > 0 or cutmix_alpha > 0 (set mixup: null to disable it)")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, H, W), targets (B,) ints or (B, K) floats) -> (mixed images, soft targets (B, K))."""
        target = y if y.is_floating_point() else nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        if torch.rand(()) >= self.prob:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or torch.rand(()) < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        x_flip = x.flip(0)
        if use_cutmix:
            x, lam = self._paste_box(x, x_flip, lam)
        else:
            x = x * lam + x_flip * (1 - lam)
        return x, target * lam + target.flip(0) * (1 - lam)

    @staticmethod
    def _paste_box(x: torch.Tensor, x_flip: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
        """Paste a random box of area ~(1 - lam) from the flipped batch; return lam corrected for clipping."""
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x_flip[..., top:bottom, left:right]
        return x, 1.0 - (bottom - top) * (right - left) / (h * w)
