"""The pure parts of the optimizer wiring: which parameters decay, and the schedule."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from vit_exp.models import create_model
from vit_exp.optim import param_groups, warmup_decay


def test_only_weight_matrices_decay() -> None:
    model = create_model("vit_test", num_classes=10, img_size=16)
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay  # the optimizer's own applies
    assert {"pos_embed", "cls_token"} <= kept
    assert all(
        n.endswith(".bias") or ".norm" in n or n.startswith("norm") or n in ("pos_embed", "cls_token") for n in kept
    )
    assert {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight"} <= decayed
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out_and_decay_can_be_set() -> None:
    model = create_model("vit_test", num_classes=10, img_size=16)
    model.patch_embed.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert groups[0]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_warmup_then_cosine() -> None:
    f = functools.partial(warmup_decay, total_steps=110, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)  # half way through the decay
    assert f(110) == pytest.approx(0.0, abs=1e-12) and f(500) == pytest.approx(0.0, abs=1e-12)
    values = [f(s) for s in range(10, 111)]
    assert values == sorted(values, reverse=True)


def test_linear_constant_and_floor() -> None:
    assert warmup_decay(60, total_steps=110, warmup_steps=10, decay="linear") == pytest.approx(0.5)
    assert warmup_decay(90, total_steps=100, decay="constant") == 1.0
    assert warmup_decay(100, total_steps=100, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_decay(25, total_steps=100, decay="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="cosine"):
        warmup_decay(0, total_steps=10, decay="step")


def test_schedule_drives_lambdalr() -> None:
    from functools import partial

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_decay, total_steps=20, warmup_steps=4))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[-1] < 0.01


def test_warmup_counts_the_step_being_taken() -> None:
    """The first update already uses lr / warmup_steps (timm's ``warmup_t`` counting, step + 1), not lr 0; step
    ``warmup_steps - 1`` reaches the full rate. (The docstring said "from 0"; the values are the default run's.)"""
    assert [warmup_decay(s, total_steps=100, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_decay(0, total_steps=100, warmup_steps=1) == 1.0 and warmup_decay(0, total_steps=100) == 1.0


def test_grad_norm_is_computed_once_per_step_and_equals_clippings_norm() -> None:
    from vit_exp.optim import grad_norm

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    norm = grad_norm(opt, step=0)
    assert grad_norm(opt, step=0) is norm  # the NaN guard's norm, reused by clipping
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    model.weight.grad.mul_(2)
    assert grad_norm(opt, step=1) is not norm  # a new step, a new norm


def test_optimizers_are_fused_on_cuda_unless_the_config_chose() -> None:
    from functools import partial

    from vit_exp.optim import build_optimizer

    seen = []

    def adamw(params, lr: float = 1e-3, fused: bool | None = None) -> list:
        seen.append(fused)
        return []

    build_optimizer(partial(adamw, lr=1.0), [], torch.device("cuda"))
    build_optimizer(partial(adamw, lr=1.0, fused=False), [], torch.device("cuda"))
    build_optimizer(partial(adamw, lr=1.0), [], torch.device("cpu"))  # CPU's fused AdamW rounds differently
    assert seen == [True, False, None]
