"""Layer-wise lr decay (``optim.layer_decay``): the groups equal timm's, and the schedule multiplies each group's scale,
across a resume too."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from vit_exp.models import create_model
from vit_exp.optim import build_optimizer, param_groups, scale_lrs, warmup_decay

TINY = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_classes=10)


def _by_scale_and_decay(groups: list[dict], model: torch.nn.Module, weight_decay: float) -> dict[tuple, set[str]]:
    """{(lr_scale, weight_decay): parameter names}: what two group lists must agree on, whatever their order."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[tuple, set[str]] = {}
    for g in groups:
        key = (round(g["lr_scale"], 12), g.get("weight_decay", weight_decay))
        out.setdefault(key, set()).update(names[id(p)] for p in g["params"])
    return out


@pytest.mark.parametrize(
    ("ours", "timm_name"),
    [("vit_base", "vit_base_patch16_224"), ("deit_base_distilled", "deit_base_distilled_patch16_224")],
)
def test_groups_and_scales_equal_timms(ours: str, timm_name: str) -> None:
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_layer_decay

    model = create_model(ours, **TINY)
    reference = timm.create_model(timm_name, pretrained=False, **TINY)
    assert {n for n, _ in model.named_parameters()} == {n for n, _ in reference.named_parameters()}
    expected = param_groups_layer_decay(
        reference, weight_decay=0.05, no_weight_decay_list=reference.no_weight_decay(), layer_decay=0.65
    )
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.65)
    assert _by_scale_and_decay(groups, model, 0.05) == _by_scale_and_decay(expected, reference, 0.05)
    # the head learns at the full rate, the embeddings at 0.65 ** (depth + 1); the final norm with the last block
    scales = {n: g["lr_scale"] for g in groups for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert scales["head.weight"] == 1.0 and scales["pos_embed"] == pytest.approx(0.65**4)
    assert scales["norm.weight"] == scales["blocks.2.mlp.fc1.weight"] == pytest.approx(0.65)


def test_without_layer_decay_the_two_groups_stay() -> None:
    model = create_model("vit_test", img_size=16, num_classes=10)
    plain, again = param_groups(model), param_groups(model, layer_decay=None)
    assert len(plain) == len(again) == 2 and all("lr_scale" not in g for g in again)
    assert [[id(p) for p in g["params"]] for g in plain] == [[id(p) for p in g["params"]] for g in again]


def _optimizer_and_schedule(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """As ``ViTModule.configure_optimizers`` makes them."""
    factory = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    optimizer = scale_lrs(build_optimizer(factory, param_groups(model, layer_decay=0.5), torch.device("cpu")))
    schedule = partial(warmup_decay, total_steps=10, warmup_steps=3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler):
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_each_groups_lr_is_its_scale_times_the_schedule_across_a_resume() -> None:
    torch.manual_seed(0)
    model = create_model("vit_test", img_size=16, num_classes=10)  # depth 2: scales 1, 0.5, 0.25, 0.125
    optimizer, scheduler = _optimizer_and_schedule(model)
    assert sorted({g["lr_scale"] for g in optimizer.param_groups}) == [0.125, 0.25, 0.5, 1.0]
    for step in range(4):
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx([1e-3 * g["lr_scale"] * warmup_decay(step, 10, 3) for g in optimizer.param_groups])
        _step(model, optimizer, scheduler)
    saved = optimizer.state_dict(), scheduler.state_dict()

    # A resumed run builds both anew (configure_optimizers) and loads their states: the same lrs, not scaled twice.
    optimizer2, scheduler2 = _optimizer_and_schedule(model)
    optimizer2.load_state_dict(saved[0])
    scheduler2.load_state_dict(saved[1])
    for _ in range(2):
        _step(model, optimizer, scheduler)
        _step(model, optimizer2, scheduler2)
    assert [g["lr"] for g in optimizer2.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [1e-3 * g["lr_scale"] * warmup_decay(6, 10, 3) for g in optimizer.param_groups]
    )


def test_layer_decay_in_a_run(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """``optim.layer_decay`` reaches the optimizer through train.py's code path (it is not a torch argument)."""
    from vit_exp import build, run

    trainers = []
    make = build.build_trainer
    monkeypatch.setattr(run, "build_trainer", lambda *a, **k: trainers.append(make(*a, **k)) or trainers[-1])
    run.train(tiny_cfg("debug=fast_dev_run", "optim.layer_decay=0.65"))
    groups = trainers[0].optimizers[0].param_groups
    assert len(groups) == 4 * 2  # vit_test: embeddings, 2 blocks, head; each decayed and not
    assert [g["initial_lr"] for g in groups] == pytest.approx([2e-3 * g["lr_scale"] for g in groups])
    assert [g["lr_scale"] for g in groups] == pytest.approx([0.65 ** (3 - i // 2) for i in range(8)])


def test_layer_decay_out_of_range_is_a_config_error(tiny_cfg) -> None:
    from vit_exp.checks import validate
    from vit_exp.errors import ConfigError

    message = r"optim.layer_decay=1.5 is not a number in \(0, 1\] \(or null\); set e.g. optim.layer_decay=0.65"
    with pytest.raises(ConfigError, match=message):
        validate(tiny_cfg("optim.layer_decay=1.5"))
