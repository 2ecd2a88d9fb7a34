"""ViTModule: loss, metrics and optimizer wiring, without a Trainer where none is needed."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from vit_exp.models import create_model
from vit_exp.module import MultilabelTopKHit, ViTModule
from vit_exp.optim import warmup_decay

# training_step logs; outside a Trainer, Lightning warns that there is nowhere to log to.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def _module(num_classes: int = 10, **kwargs) -> ViTModule:
    backbone = create_model("vit_test", num_classes=num_classes, img_size=16)
    return ViTModule(backbone, num_classes=num_classes, **kwargs)


def test_cross_entropy_with_label_smoothing() -> None:
    module = _module(label_smoothing=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = module.training_step((x, y), 0)
    expected = torch.nn.functional.cross_entropy(module(x), y, label_smoothing=0.1)
    assert loss.ndim == 0 and torch.allclose(loss, expected)


def test_multi_label_uses_sigmoid_cross_entropy() -> None:
    with pytest.warns(UserWarning, match="label_smoothing is ignored"):
        module = _module(multi_label=True, label_smoothing=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.zeros(4, 10)
    y[:, 3] = 1.0
    loss = module.training_step((x, y), 0)
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(module(x), y))
    assert isinstance(module.metrics["val_top1"], MultilabelTopKHit)


def test_multilabel_top_k_equals_top_k_accuracy_on_one_hot_targets() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    for k in (1, 5):
        ours, ref = MultilabelTopKHit(k), MulticlassAccuracy(num_classes=10, top_k=k, average="micro")
        ours.update(logits, one_hot)
        ref.update(logits, labels)
        assert torch.allclose(ours.compute(), ref.compute())


def test_top5_with_fewer_than_five_classes() -> None:
    module = _module(num_classes=3)
    assert module.metrics["test_top5"].top_k == 3


def test_weight_decay_and_schedule_reach_the_optimizer() -> None:
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.3)
    schedule = partial(warmup_decay, warmup_steps=5)
    module = _module(optimizer=optimizer, scheduler=schedule)
    module.trainer = type("T", (), {"estimated_stepping_batches": 50})()  # what Lightning provides
    conf = module.configure_optimizers()
    decay, no_decay = conf["optimizer"].param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.0)
    assert conf["lr_scheduler"]["interval"] == "step"
    assert decay["lr"] == pytest.approx(1e-3 / 5)  # first warmup step


def test_no_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        _module().configure_optimizers()


def test_checkpoint_hyperparameters_are_plain() -> None:
    module = _module(optimizer=partial(torch.optim.SGD, lr=0.1), config={"model": {"name": "vit_test"}})
    assert {"num_classes", "multi_label", "label_smoothing", "compile", "config"} <= set(module.hparams)
    assert not {"backbone", "optimizer", "scheduler"} & set(module.hparams)  # objects stay out of checkpoints


def test_bf16_true_keeps_losses_and_metrics_in_float32() -> None:
    """bf16-true (how TPUs run) converts the network; the loss and the metrics' sums stay float32."""
    module = _module(mixup={"mixup_alpha": 0.8}).to(torch.bfloat16)
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 3])
    loss = module.training_step((x, y), 0)  # mixup's soft targets are bf16 like the images
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    module._eval_step((x, y), "val")
    assert module.metrics["val_top1"].compute().dtype == torch.float32
    hits = MultilabelTopKHit(1).to(torch.bfloat16)  # counts of 300M JFT images: not in bf16 (nor in fp32)
    hits.update(torch.randn(300, 10), torch.ones(300, 10))
    assert hits.compute().dtype == torch.float32 and hits.total.item() == 300


def test_bf16_true_trains_on_the_cpu(tiny_cfg) -> None:
    """`hw=cpu trainer.precision=bf16-true` failed with `Input type (float) and bias type (c10::BFloat16)`."""
    from vit_exp import run

    results = run.train(tiny_cfg("trainer.precision=bf16-true"))
    assert results.steps == 3 and results.top1 is not None


def test_fp16_clipping_with_a_fused_optimizer_clips_the_unscaled_gradients() -> None:
    """fp16-mixed with fused AdamW (the CUDA default): Lightning leaves the gradients scaled for the fused step to
    unscale; clipping them as they are would clip a norm ~scale times too large, the update as good as lost. The
    clipped step must be the one a plain AdamW takes on the true gradients, clipped (here on a CPU GradScaler)."""
    import lightning.pytorch as pl
    from lightning.pytorch.plugins.precision import MixedPrecision

    scale = 1024.0
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale))
    trainer = pl.Trainer(accelerator="cpu", plugins=[plugin], logger=False, enable_checkpointing=False)
    torch.manual_seed(0)
    module, reference = _module(), _module()
    reference.load_state_dict(module.state_dict())
    module.trainer = trainer
    fused = torch.optim.AdamW(module.parameters(), lr=0.1, fused=True)
    plain = torch.optim.AdamW(reference.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    plugin.scaler.scale(10 * torch.nn.functional.cross_entropy(module(x), y)).backward()  # scaled gradients
    (10 * torch.nn.functional.cross_entropy(reference(x), y)).backward()  # the true ones
    assert torch.nn.utils.get_total_norm([q.grad for q in reference.parameters()]) > 2  # clipping to 1 acts
    module.configure_gradient_clipping(fused, gradient_clip_val=1.0)
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    torch.testing.assert_close(torch.nn.utils.get_total_norm([p.grad for p in module.parameters()]), torch.tensor(1.0))
    plugin.scaler.step(fused)  # what Lightning's MixedPrecision.optimizer_step does next
    plain.step()
    for p, q in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_the_model_is_compiled_once_though_lightning_configures_it_for_fit_and_test() -> None:
    module = _module(compile=True)
    module.configure_model()  # fit
    compiled = module.model._compiled_call_impl
    module.configure_model()  # test: the same compiled forward, not a new wrapper to compile again
    assert compiled is not None and module.model._compiled_call_impl is compiled
