"""Few-shot linear evaluation as in the ViT paper (section 4.1) and big_vision's few-shot evaluator.

Frozen pre-logit features, standardised with the mean and standard deviation of the k shots; for k shots
per class, a closed-form ridge regression from the features (plus a constant bias feature of 100, so that the
bias is all but unregularised) to targets in {-1, +1}; top-1 of the regression's argmax on a held-out split;
the mean over several random draws of the k shots. All as big_vision's ``evaluators/fewshot_lsr.py`` does.
Torch only: the data side is ``vit_exp.fewshot_eval``, the Lightning callback ``vit_exp.callbacks.FewShotEval``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)  # draws of the k shots, averaged
DEFAULT_L2 = 2.0**10  # big_vision's fixed ridge penalty
BIAS_CONSTANT = 100.0  # big_vision's bias feature: large, so that the penalty barely touches the bias


def ridge_fit(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2_reg: float = DEFAULT_L2, bias: float = 1.0
) -> torch.Tensor:
    """Closed-form ridge regression to {-1, +1} one-vs-rest targets.

    Args:
        x: Features (n, d).
        y: Integer labels (n,).
        num_classes: Number of classes (columns of the target).
        l2_reg: Penalty on every weight, the bias included (as big_vision does).
        bias: Value of the constant feature appended for the bias; the larger, the less it is penalised.

    Returns:
        Weights (d + 1, num_classes); the last row is the bias.
    """
    x = _with_bias(x.double(), bias)
    targets = 2.0 * nn.functional.one_hot(y.long(), num_classes).double() - 1.0
    gram = x.T @ x + l2_reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.linalg.solve(gram, x.T @ targets)


def ridge_predict(w: torch.Tensor, x: torch.Tensor, bias: float = 1.0) -> torch.Tensor:
    """Class indices (n,) of the ridge weights' argmax; ``bias`` as given to ``ridge_fit``."""
    return (_with_bias(x.double(), bias) @ w).argmax(dim=-1)


def _with_bias(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], 1), value, dtype=x.dtype, device=x.device)], dim=1)


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
    seeds: Sequence[int] = DEFAULT_SEEDS,
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
            shots_x = train_x[idx].double()
            mean, std = shots_x.mean(dim=0), shots_x.std(dim=0, correction=0) + 1e-5  # whiten by the shots
            w = ridge_fit((shots_x - mean) / std, train_y[idx], num_classes, l2_reg, bias=BIAS_CONSTANT)
            pred = ridge_predict(w, (test_x.double() - mean) / std, bias=BIAS_CONSTANT)
            accs.append((pred == test_y).double().mean().item())
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
