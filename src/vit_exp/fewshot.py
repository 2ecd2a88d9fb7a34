"""Few-shot linear evaluation as in the ViT paper (section 4.1) and big_vision's few-shot evaluator.

Frozen pre-logit features; for k shots per class, a closed-form ridge regression from the features (plus a
bias feature) to targets in {-1, +1}; top-1 of the regression's argmax on a held-out split; the mean over
several random draws of the k shots. Torch only: the Lightning callback lives in ``vit_exp.callbacks``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2 = 2.0**10  # big_vision's fixed ridge penalty


def ridge_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_reg: float = DEFAULT_L2) -> torch.Tensor:
    """Closed-form ridge regression to {-1, +1} one-vs-rest targets.

    Args:
        x: Features (n, d).
        y: Integer labels (n,).
        num_classes: Number of classes (columns of the target).
        l2_reg: Penalty on every weight, the bias included (as big_vision does).

    Returns:
        Weights (d + 1, num_classes); the last row is the bias.
    """
    x = _with_bias(x.double())
    targets = 2.0 * nn.functional.one_hot(y.long(), num_classes).double() - 1.0
    gram = x.T @ x + l2_reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.linalg.solve(gram, x.T @ targets)


def ridge_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (_with_bias(x.double()) @ w).argmax(dim=-1)


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def sample_shots(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` examples per class, drawn without replacement with a fixed seed.

    Raises:
        ValueError: a class has fewer than ``shots`` examples.
    """
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < shots:
            raise ValueError(f"class {int(c)} has {len(idx)} training examples, fewer than {shots} shots")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:shots]])
    return torch.cat(picks)


def fewshot_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    shots: Sequence[int] = DEFAULT_SHOTS,
    seeds: Sequence[int] = (0, 1, 2),
    l2_reg: float = DEFAULT_L2,
) -> dict[int, float]:
    """Mean top-1 (0..1) of the ridge classifier for each shot count, over ``seeds`` draws of the shots.

    Shot counts larger than the smallest class are skipped.
    """
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    smallest = int(torch.bincount(train_y.long()).min())
    out = {}
    for k in shots:
        if k > smallest:
            continue
        accs = []
        for seed in seeds:
            idx = sample_shots(train_y, k, seed)
            w = ridge_fit(train_x[idx], train_y[idx], num_classes, l2_reg)
            accs.append((ridge_predict(w, test_x) == test_y).double().mean().item())
        out[k] = sum(accs) / len(accs)
    return out


@torch.no_grad()
def extract_features(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (n, num_features) and labels (n,) of every batch, the model in eval mode.

    ``batches`` yields (images, labels) with images ready for the model (normalised floats).
    """
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for x, y in batches:
        f = model.forward_head(model.forward_features(x.to(device)), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
