"""Training-recipe machinery: global batch and lr scaling, Mixup/CutMix, random erasing, repeated augmentation, mAP."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import TINY, compose
from vit_exp.data.datamodule import ViTDataModule
from vit_exp.data.digits import DigitsSource
from vit_exp.data.mixup import MixupCutmix
from vit_exp.data.order import RepeatedAugSampler
from vit_exp.scaling import plan, scaled_lr


def test_lr_scaling_rules():
    assert scaled_lr(5e-4, 1024, 512, "linear") == pytest.approx(1e-3)
    assert scaled_lr(1e-3, 1024, 4096, "sqrt") == pytest.approx(5e-4)
    assert scaled_lr(3e-3, 64, 4096, "none") == 3e-3
    with pytest.raises(ValueError, match="needs lr_scaling.base_batch"):
        scaled_lr(1e-3, 64, None, "linear")
    with pytest.raises(ValueError, match="unknown lr_scaling.rule"):
        scaled_lr(1e-3, 64, 512, "cubic")
    p = plan(per_device=128, accumulate=2, devices=8, nodes=2, base_lr=8e-4, rule="linear", base_batch=4096)
    assert p.global_batch == 4096 and p.lr == pytest.approx(8e-4)
    assert p.describe() == (
        "global batch 4096 = 128 per device x 2 accumulation x 8 devices x 2 nodes; "
        "lr 0.0008 (linear scaling of 0.0008 at batch 4096)"
    )


def test_mixup_mixes_images_and_targets_alike():
    torch.manual_seed(0)
    x = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    y = torch.tensor([0, 1, 2, 3])
    mixed, target = MixupCutmix(num_classes=5, mixup_alpha=0.8)(x, y)
    lam = target[0, 0].item()  # sample 0 is mixed with sample 3 (the reversed batch)
    torch.testing.assert_close(mixed[0], torch.full((3, 8, 8), 3 * (1 - lam)))
    torch.testing.assert_close(target.sum(-1), torch.ones(4))
    assert target[0, 3].item() == pytest.approx(1 - lam)


def test_cutmix_target_weight_is_the_pasted_area():
    torch.manual_seed(1)
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])
    mixed, target = MixupCutmix(num_classes=2, cutmix_alpha=1.0)(x, torch.tensor([0, 1]))
    pasted = mixed[0].mean().item()  # sample 0 (zeros) received a box of ones from sample 1
    assert target[0, 1].item() == pytest.approx(pasted)
    assert 0 < pasted < 1


def test_mixup_needs_an_alpha():
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        MixupCutmix(num_classes=3)


def test_repeated_augmentation_sends_each_copy_to_another_rank():
    samplers = [RepeatedAugSampler(30, repeats=3, rank=r, world_size=3, seed=5) for r in range(3)]
    per_rank = [list(s) for s in samplers]
    assert [len(p) for p in per_rank] == [10, 10, 10] == [len(s) for s in samplers]
    # position i of every rank is the same image: its three augmented copies run side by side
    assert per_rank[0] == per_rank[1] == per_rank[2]
    assert len(set(per_rank[0])) == 10
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != per_rank[0]


def test_repeated_augmentation_resumes_mid_epoch_with_each_copy_augmented_apart():
    from vit_exp.data.order import resumable_loader

    class Draws(torch.utils.data.Dataset):  # item i: (i, a random "augmentation")
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor([float(i), torch.rand(()).item()])

    def loader() -> torch.utils.data.DataLoader:
        sampler = RepeatedAugSampler(12, repeats=3, seed=5, keyed=True)
        sampler.set_epoch(1)
        return resumable_loader(Draws(), batch_size=3, sampler=sampler, num_workers=2)

    full = torch.cat(list(loader()))
    image, draw = full[:, 0], full[:, 1]
    assert all(len(set(draw[image == i].tolist())) == (image == i).sum() for i in image.unique())  # copies differ
    cut = loader()
    it = iter(cut)
    seen = [next(it) for _ in range(2)]
    resumed = loader()
    resumed.load_state_dict(cut.state_dict())
    assert torch.equal(torch.cat(seen + list(resumed)), full)


def test_multilabel_map_is_one_for_a_perfect_ranking():
    from vit_exp.models import create_model
    from vit_exp.module import ViTModule

    module = ViTModule(create_model("vit_test", img_size=16, num_classes=4), num_classes=4, multi_label=True)
    target = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
    module.metrics["val_mAP"].update(target.float() * 5 - 2.5, target)
    assert module.metrics["val_mAP"].compute().item() == pytest.approx(1.0)


def test_deit_recipe_erases_as_deit(tmp_path):
    """DeiT's random erasing (p 0.25, mode pixel) composes, and its whole train_aug builds a datamodule."""
    train_aug = compose("train", ["experiment=deit_small_imagenet"], tmp_path).data.train_aug
    assert train_aug.random_erasing == {"prob": 0.25, "mode": "pixel"}
    dm = ViTDataModule(DigitsSource(), img_size=224, train_aug=train_aug)
    assert (dm.erasing.prob, dm.erasing.mode) == (0.25, "pixel")
    assert dm.train_transform is not dm.eval_transform


def test_recipe_machinery_in_a_run(tiny_cfg, caplog):
    """Mixup, random erasing, repeated augmentation, lr scaling through train.py's code path: trains, logs the plan."""
    from vit_exp.run import train

    cfg = tiny_cfg(
        "debug=fast_dev_run",
        "data.batch_size=32",
        "data.repeated_aug=3",
        "mixup={mixup_alpha: 0.8, cutmix_alpha: 1.0}",
        "data.train_aug={random_erasing: {prob: 1.0, mode: pixel}}",
        "lr_scaling.rule=linear",
        "lr_scaling.base_batch=64",
        "optim.lr=1e-3",
    )
    with caplog.at_level(logging.INFO, logger="vit_exp.run"):
        train(cfg)
    assert "global batch 32 = 32 per device x 1 accumulation x 1 device x 1 node; lr 0.0005 (linear scaling of 0.001 at batch 64)" in caplog.text


# The preset's model (not conftest.TINY's vit_test) at vit_test's widths, on digits, for a few batches.
TINY_WIDTHS = [*(o for o in TINY if not o.startswith("model=")), "data=digits", "res=16", "patch=4", "++model.depth=1", "++model.embed_dim=32", "++model.num_heads=2",
               "data.batch_size=32", "data.num_workers=0", "sched.warmup_steps=2", "debug=limit"]  # fmt: skip


def test_augreg_finetune_preset_runs_tiny(tmp_path):
    """experiment=augreg_b16_i21k_to_i1k_384 shrunk: its weights' head (21k classes there, 7 here) is re-made."""
    from vit_exp.models import create_model
    from vit_exp.run import train

    pretrained = tmp_path / "i21k.pth"
    torch.save(create_model("vit_base", patch_size=4, img_size=16, depth=1, embed_dim=32, num_heads=2,
                            num_classes=7).state_dict(), pretrained)  # fmt: skip
    cfg = compose("train", ["experiment=augreg_b16_i21k_to_i1k_384", *TINY_WIDTHS, f"model.pretrained={pretrained}"],
                  tmp_path / "run")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.trainer.max_steps) == (0.01, 0.0, 20000)
    with pytest.warns(UserWarning, match="head .* does not fit"):
        results = train(cfg)
    assert results.model == "vit_base_patch4_16-d1w32h2" and results.steps == 3


def test_deit_distilled_preset_runs_tiny(tmp_path):
    """experiment=deit_b_distilled shrunk, with a vit_test teacher in place of RegNetY-16GF."""
    from vit_exp.models import create_model
    from vit_exp.run import train

    teacher = tmp_path / "teacher.pth"
    torch.save(create_model("vit_test", img_size=16, num_classes=10).state_dict(), teacher)
    cfg = compose("train", ["experiment=deit_b_distilled", *TINY_WIDTHS, "distill.teacher.name=vit_test",
                            f"distill.teacher.checkpoint={teacher}"], tmp_path / "run")  # fmt: skip
    assert (cfg.distill.kind, cfg.distill.alpha, cfg.model.drop_path_rate) == ("hard", 0.5, 0.1)
    results = train(cfg)
    assert results.model == "deit_base_distilled_patch4_16-d1w32h2" and results.steps == 3
