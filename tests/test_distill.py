"""DeiT distillation: the distilled ViT against timm's, the losses against their formulas, a frozen teacher kept out
of the student's checkpoint and optimizer, the config errors, and train -> eval with a teacher trained first."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vit_exp.distill import Distillation, Teacher, hard_distillation_loss, load_teacher, soft_distillation_loss
from vit_exp.errors import ConfigError
from vit_exp.models import create_model
from vit_exp.models.variants import INCEPTION_MEAN, INCEPTION_STD
from vit_exp.module import ViTModule

STUDENT = dict(img_size=16, num_classes=10)  # vit_test widths


def test_deit_base_distilled_has_timms_parameter_count() -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model("deit_base_distilled_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == 87_338_192
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model("deit_base_distilled_patch16_224", pretrained=False)
    assert sum(p.numel() for p in reference.parameters()) == 87_338_192
    assert model.state_dict().keys() == reference.state_dict().keys()  # timm's files load as they are


def test_logits_equal_timms_on_the_same_weights() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, img_size=64)
    model = create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=64)
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))  # the mean of the two heads
        model.train().set_distilled_training(True)
        reference.train().set_distilled_training(True)
        for ours, theirs in zip(model(x), reference(x), strict=True):  # (class head, distillation head)
            torch.testing.assert_close(ours, theirs)


def test_soft_and_hard_losses_follow_deit() -> None:
    torch.manual_seed(0)
    student, teacher, tau = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p_t = (teacher / tau).softmax(-1)
    kl = (p_t * (p_t.log() - (student / tau).log_softmax(-1))).sum()  # KL(teacher || student), summed
    assert soft_distillation_loss(student, teacher, tau) == pytest.approx(
        (kl * tau**2 / student.numel()).item(), rel=1e-5
    )
    picked = -student.log_softmax(-1)[torch.arange(4), teacher.argmax(-1)]
    assert hard_distillation_loss(student, teacher) == pytest.approx(picked.mean().item(), rel=1e-6)


def test_class_head_learns_the_labels_and_distillation_head_the_teacher() -> None:
    torch.manual_seed(0)
    teacher_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 3])
    cls, dist = torch.randn(4, 5), torch.randn(4, 5)
    t = teacher_net(x).detach()
    distillation = Distillation(Teacher(teacher_net, "linear"), kind="hard", alpha=0.3)
    expected = 0.7 * F.cross_entropy(cls, y) + 0.3 * F.cross_entropy(dist, t.argmax(-1))
    assert distillation.loss((cls, dist), x, y, F.cross_entropy) == pytest.approx(expected.item(), rel=1e-6)
    one_head = 0.7 * F.cross_entropy(cls, y) + 0.3 * F.cross_entropy(cls, t.argmax(-1))  # no distillation token
    assert distillation.loss(cls, x, y, F.cross_entropy) == pytest.approx(one_head.item(), rel=1e-6)


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    """A vit_test teacher's weights for 10 classes (torch.save of a state dict, as timm's files are)."""
    torch.manual_seed(1)
    path = tmp_path / "teacher.pth"
    torch.save(create_model("vit_test", **STUDENT).state_dict(), path)
    return path


def _teacher(path: Path, name: str | None = "vit_test", num_classes: int = 10) -> Teacher:
    return load_teacher(path, num_classes, 16, INCEPTION_MEAN, INCEPTION_STD, name=name)


def test_the_teacher_is_frozen_and_kept_out_of_the_students_checkpoint_and_optimizer(teacher_file: Path) -> None:
    from functools import partial

    student = create_model("vit_test", **STUDENT, distilled=True)
    module = ViTModule(student, num_classes=10, optimizer=partial(torch.optim.AdamW, lr=1e-3),
                       distillation=Distillation(_teacher(teacher_file)))  # fmt: skip
    teacher = module.distillation.teacher
    assert module.state_dict().keys() == {f"model.{k}" for k in student.state_dict()}
    assert {id(p) for p in module.parameters()} == {id(p) for p in student.parameters()}
    optimizer = module.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in student.parameters()}

    module.train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss = module.training_step((x, y), 0)
    loss.backward()
    assert not teacher.model.training and all(
        p.grad is None and not p.requires_grad for p in teacher.model.parameters()
    )
    assert all(p.grad is not None for p in student.parameters())  # both heads learn
    assert copy.deepcopy(module).distillation.teacher is teacher  # the EMA's copy of the module shares it


def test_teacher_errors_are_one_line_config_errors(teacher_file: Path, tmp_path: Path, tiny_cfg) -> None:
    from vit_exp.checks import validate

    with pytest.raises(ConfigError, match="has a head of 10 classes but this data has 7"):
        _teacher(teacher_file, num_classes=7)
    with pytest.raises(ConfigError, match="neither one of our models nor a timm architecture"):
        _teacher(teacher_file, name="no_such_net")
    with pytest.raises(ConfigError, match=r"distill.teacher.checkpoint=.*missing.pth is not a file"):
        validate(tiny_cfg("distill=hard", f"distill.teacher.checkpoint={tmp_path / 'missing.pth'}"))
    with pytest.raises(ConfigError, match="distill.kind=sotf is not one of soft, hard; set e.g. distill.kind=hard"):
        validate(tiny_cfg("distill=hard", f"distill.teacher.checkpoint={teacher_file}", "distill.kind=sotf"))
    with pytest.raises(ConfigError, match="needs values you have not given: distill.teacher.checkpoint=..."):
        validate(tiny_cfg("distill=soft"))


def test_a_timm_teacher_sees_the_input_in_its_own_normalisation(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.save(net.state_dict(), tmp_path / "resnet.pth")
    teacher = _teacher(tmp_path / "resnet.pth", name="test_resnet")
    image = torch.rand(2, 3, 16, 16)
    ours = (image - torch.tensor(INCEPTION_MEAN).view(1, 3, 1, 1)) / torch.tensor(INCEPTION_STD).view(1, 3, 1, 1)
    theirs = (image - torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        net.pretrained_cfg["std"]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(teacher(ours), net.eval()(theirs))


def test_train_with_a_teacher_trained_first_then_eval_the_student(tiny_cfg, tmp_path: Path) -> None:
    """A teacher run, a distilled student (distillation token) taught by its best.ckpt, and eval.py on the student."""
    from vit_exp import run

    first = run.train(tiny_cfg("debug=limit", run_dir=tmp_path / "teacher"))
    student = run.train(tiny_cfg("debug=limit", "distill=hard", f"distill.teacher.checkpoint={first.checkpoint}",
                                 "+model.distilled=true", run_dir=tmp_path / "student"))  # fmt: skip
    assert student.model == "vit_test_patch4_16-dist" and student.steps == 3
    saved = torch.load(student.checkpoint, weights_only=True)["state_dict"]
    assert "model.dist_token" in saved and "model.head_dist.weight" in saved
    assert len(saved) == len(create_model("vit_test", **STUDENT, distilled=True).state_dict())  # no teacher in it
    evaluated = run.evaluate(tiny_cfg(f"ckpt_path={student.checkpoint}", config_name="eval", run_dir=tmp_path / "e"))
    assert evaluated.model == student.model and evaluated.top1 == pytest.approx(student.top1)
