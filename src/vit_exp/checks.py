"""Checks that stop an impossible run before it costs anything: the composed config, the hardware, the data's
batches, and (after fit) that training took place.

Every check raises a user error (``vit_exp.errors``) whose message names the key, the bad value and the fix;
the command line prints it as one ``error: ...`` line. Only ``check_hardware`` imports torch or Lightning.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_exp.errors import ConfigError, HardwareError

if TYPE_CHECKING:
    from vit_exp.models import ModelSpec

# Lightning 2.6's accepted trainer.precision values (lightning.fabric.connector._PRECISION_INPUT).
PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
    "32-true", "64-true", "64", "32", "16", "bf16",
)  # fmt: skip
_UNSET = object()


def validate(cfg: DictConfig) -> ModelSpec:
    """Check a composed train/eval config without building anything; return the model's resolved ``ModelSpec``.

    Raises:
        ConfigError: a mandatory value (``???``, or a key listed in ``required``) left unset, a value of the wrong
            type or range, a path with nothing there, an impossible model (unknown family, resolution not
            divisible by the patch, hybrid with patch 32), or sizes that disagree between model and data.
    """
    missing = _missing_keys(cfg) + [k for k in cfg.get("required") or () if OmegaConf.select(cfg, k) is None]
    if missing:
        raise ConfigError(f"this config needs values you have not given: {' '.join(k + '=...' for k in missing)}")
    check_values(cfg)
    check_paths(cfg)
    spec = resolve_model(cfg.model)
    m = cfg.model
    if cfg.data.img_size != m.img_size:
        raise ConfigError(
            f"data.img_size ({cfg.data.img_size}) differs from model.img_size ({m.img_size}); "
            f"set the resolution once with res=... (data.img_size follows model.img_size)"
        )
    if m.num_classes is not None and cfg.data.num_classes is not None and m.num_classes != cfg.data.num_classes:
        raise ConfigError(
            f"model.num_classes ({m.num_classes}) differs from data.num_classes ({cfg.data.num_classes}); "
            "leave model.num_classes at ${data.num_classes}"
        )
    return spec


def resolve_model(model_cfg: DictConfig, num_classes: Any = _UNSET) -> ModelSpec:
    """The model's identity (``vit_exp.models.ModelSpec``: name, arguments, preprocessing, published weights),
    resolved from its config; validation, building and reporting share it.

    Args:
        model_cfg: ``cfg.model`` (the arguments of ``create_model``).
        num_classes: The head's size when it is not the config's (a config that leaves it to the data).

    Raises:
        ConfigError: an unknown family or override, or a patch/resolution pair that cannot be built.
    """
    from vit_exp.models import resolve_spec

    args = OmegaConf.to_container(model_cfg, resolve=True)
    for key in ("pretrained", "grad_checkpointing"):  # how to build it, not what it is
        args.pop(key, None)
    if num_classes is not _UNSET:
        args["num_classes"] = num_classes
    try:
        return resolve_spec(**args)
    except (TypeError, ValueError) as e:
        m = model_cfg
        raise ConfigError(f"model {m.name} with patch={m.patch_size} res={m.img_size}: {e}") from None


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, without resolving interpolations (which would fail on them first)."""
    keys = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            keys.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            keys += _missing_keys(cfg[key], f"{prefix}{key}.")
    return keys


# ---- values users type -------------------------------------------------------------------------------------------


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _devices(v: Any) -> bool:
    if _whole(v):
        return v >= 1 or v == -1
    if isinstance(v, str):
        return v == "auto" or v.strip() == "-1" or all(p.strip().isdigit() for p in v.split(",") if p.strip())
    return isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(_whole(d) and d >= 0 for d in v)


@dataclass(frozen=True)
class Rule:
    """A key's accepted values: ``ok(value)``, described as ``want``, with an ``example`` of a good one."""

    key: str
    ok: Callable[[Any], bool]
    want: str
    example: str


def _rules() -> tuple[Rule, ...]:
    from vit_exp.optim import DECAYS
    from vit_exp.scaling import RULES

    count = "a whole number >= 1"
    return (
        Rule("seed", lambda v: v is None or _whole(v), "a whole number", "0"),
        Rule("trainer.max_epochs", lambda v: v is None or _whole(v) and (v >= 1 or v == -1),
             f"{count} (or -1: no limit, max_steps decides)", "10"),
        Rule("trainer.max_steps", lambda v: _whole(v) and (v >= 1 or v == -1),
             f"{count}, or -1 (max_epochs decides)", "1000"),
        Rule("trainer.devices", _devices, "a device count >= 1, -1 (every device), auto, or a list of ids", "1"),
        Rule("trainer.num_nodes", lambda v: _whole(v) and v >= 1, count, "1"),
        Rule("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS[2:8])}", "32-true"),
        Rule("trainer.log_every_n_steps", lambda v: _whole(v) and v >= 1, count, "10"),
        Rule("trainer.gradient_clip_val", lambda v: v is None or _number(v) and v >= 0,
             "a number >= 0 (0 or null: no clipping)", "1.0"),
        Rule("trainer.accumulate_grad_batches", lambda v: _whole(v) and v >= 1, count, "1"),
        Rule("trainer.check_val_every_n_epoch", lambda v: v is None or _whole(v) and v >= 1, count, "1"),
        Rule("data.batch_size", lambda v: _whole(v) and v >= 1, count, "64"),
        Rule("data.eval_batch_size", lambda v: v is None or _whole(v) and v >= 1, f"{count} (or null)", "256"),
        Rule("data.num_workers", lambda v: _whole(v) and v >= 0, "a whole number >= 0", "4"),
        Rule("data.repeated_aug", lambda v: _whole(v) and v >= 1, f"{count} (1: off)", "3"),
        Rule("optim.lr", lambda v: _number(v) and v > 0, "a number > 0", "1e-3"),
        Rule("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0", "0.05"),
        Rule("optim.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", "0.9"),
        Rule("sched.warmup_steps", lambda v: _whole(v) and v >= 0, "a whole number >= 0", "100"),
        Rule("sched.min_lr_ratio", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]", "0.0"),
        Rule("sched.decay", lambda v: v in DECAYS, f"one of {', '.join(DECAYS)}", "cosine"),
        Rule("loss.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", "0.1"),
        Rule("lr_scaling.rule", lambda v: v in RULES, f"one of {', '.join(RULES)}", "linear"),
        Rule("lr_scaling.base_batch", lambda v: v is None or _whole(v) and v >= 1, f"{count} (or null)", "512"),
        Rule("compile", lambda v: isinstance(v, bool), "true or false", "true"),
        Rule("callbacks.ema.decay", lambda v: v is None or _number(v) and 0 < v < 1,
             "a number in (0, 1) (or null: no EMA)", "0.9998"),
        Rule("callbacks.ema.warmup", lambda v: isinstance(v, bool), "true or false", "true"),
        Rule("callbacks.ema.warmup_gamma", lambda v: _number(v) and v > 0, "a number > 0", "1.0"),
        Rule("callbacks.ema.warmup_power", lambda v: _number(v) and v > 0, "a number > 0", "0.75"),
        Rule("use_ema", lambda v: isinstance(v, bool), "true or false", "false"),
        Rule("callbacks.preemption.check_every_n_steps", lambda v: v is None or _whole(v) and v >= 1,
             f"{count} (or null: trainer.log_every_n_steps)", "10"),
        Rule("callbacks.nan_guard.action", lambda v: v in ("stop", "skip"), "stop or skip", "skip"),
        Rule("callbacks.nan_guard.max_consecutive_skips", lambda v: _whole(v) and v >= 0, "a whole number >= 0",
             "10"),
    )  # fmt: skip


def _shown(value: Any) -> str:
    """A value as it would be typed on the command line."""
    if isinstance(value, str):
        return value
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return json.dumps(value, separators=(",", ":"))  # null, true, 2.5, [1,2], {"a":1}


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of the keys users type most; keys a config does not have are skipped.

    Raises:
        ConfigError: ``key=value`` is not what the key takes, with an example of a value that is.
    """
    for rule in _rules():
        value = OmegaConf.select(cfg, rule.key, default=_UNSET)
        if value is not _UNSET and not rule.ok(value):
            raise ConfigError(f"{rule.key}={_shown(value)} is not {rule.want}; set e.g. {rule.key}={rule.example}")
    scaling = cfg.get("lr_scaling") or {}
    if scaling.get("rule") not in (None, "none") and not scaling.get("base_batch"):
        raise ConfigError(
            f"lr_scaling.rule={scaling.get('rule')} needs lr_scaling.base_batch, the global batch the recipe's "
            "optim.lr was tuned for; set e.g. lr_scaling.base_batch=512 (or lr_scaling.rule=none)"
        )
    _check_mixup(cfg.get("mixup"))
    ema = OmegaConf.select(cfg, "callbacks.ema.decay")
    if ema is not None and _sharded(OmegaConf.select(cfg, "trainer.strategy")):
        raise ConfigError(
            f"callbacks.ema.decay={ema} averages a whole copy of the model, which FSDP shards: Lightning's weight "
            "averaging does not support sharded models; use hw=ddp (or hw=gpu), or callbacks.ema.decay=null"
        )


def _sharded(strategy: Any) -> bool:
    """Whether ``trainer.strategy`` (a name or a ``_target_`` node) is FSDP (ours or Lightning's)."""
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    return target.rsplit(".", 1)[-1] in ("FSDPStrategy", "AtomicFSDPStrategy", "fsdp")


def _check_mixup(mixup: Any) -> None:
    if mixup is None:
        return
    if not isinstance(mixup, DictConfig):
        raise ConfigError(f"mixup={_shown(mixup)} is not a mapping; write mixup='{{mixup_alpha: 0.8}}' or mixup=null")
    alphas = [mixup.get(k, 0.0) for k in ("mixup_alpha", "cutmix_alpha")]
    if not all(_number(a) and a >= 0 for a in alphas) or not any(alphas):
        raise ConfigError(
            f"mixup.mixup_alpha={_shown(alphas[0])} mixup.cutmix_alpha={_shown(alphas[1])}: one of them must be > 0 "
            "(and neither < 0); set e.g. mixup.mixup_alpha=0.8, or mixup=null to train without it"
        )
    for key in ("prob", "switch_prob"):
        value = mixup.get(key, 0.5)
        if not (_number(value) and 0 <= value <= 1):
            raise ConfigError(f"mixup.{key}={_shown(value)} is not a probability in [0, 1]; set e.g. mixup.{key}=0.5")


def check_paths(cfg: DictConfig) -> None:
    """``data.root``, ``model.pretrained`` and ``ckpt_path`` lead somewhere; ``ckpt_path`` is a checkpoint of ours.

    Raises:
        ConfigError: a path with nothing there, or a ``ckpt_path`` that ``train.py`` did not write.
    """
    from vit_exp.checkpoints import checkpoint_hparams, no_checkpoint

    root = OmegaConf.select(cfg, "data.root")
    if root and not Path(str(root)).expanduser().exists():
        raise ConfigError(
            f"data.root={root} does not exist; point data.root at the folder that holds the data "
            "(for image folders: train/ and val/ with one subfolder per class)"
        )
    pretrained = OmegaConf.select(cfg, "model.pretrained")
    if pretrained and not Path(pretrained).exists():  # a file, or the directory of a sharded (FSDP) checkpoint
        raise no_checkpoint(f"model.pretrained={pretrained}", Path(pretrained))
    if cfg.get("ckpt_path"):
        checkpoint_hparams(cfg.ckpt_path)  # raises on a path that is not a checkpoint written by train.py


# ---- hardware, batches, steps -------------------------------------------------------------------------------------


def check_hardware(trainer_cfg: DictConfig) -> None:
    """Fail with a clear message when the hardware profile asks for a device that is not here.

    Raises:
        HardwareError: TPU/XLA without torch_xla or a TPU (or with a device count, strategy or precision that XLA
            does not run), a GPU profile without CUDA or with more GPUs than there are,
            FSDP on the CPU, or several nodes without a launcher that starts their processes.
    """
    accelerator, strategy = trainer_cfg.get("accelerator"), trainer_cfg.get("strategy")
    if accelerator == "tpu" or strategy in ("xla", "single_xla"):
        _check_xla(trainer_cfg)
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise HardwareError("this hardware profile needs a CUDA GPU and none is visible here; use hw=cpu")
        devices, found = trainer_cfg.get("devices"), torch.cuda.device_count()
        if isinstance(devices, int) and devices > found:
            raise HardwareError(
                f"trainer.devices={devices} GPUs asked for, {found} visible here; set trainer.devices={found} "
                "(or -1: every visible GPU)"
            )
    if accelerator == "cpu" and _sharded(strategy):
        raise HardwareError("Lightning runs FSDP on CUDA GPUs only; on the CPU use hw=ddp_sim (DDP over gloo)")
    nodes = trainer_cfg.get("num_nodes") or 1
    launched = "SLURM_NTASKS" in os.environ or {"MASTER_ADDR", "NODE_RANK"} <= set(os.environ)
    if nodes > 1 and not launched:
        raise HardwareError(
            f"trainer.num_nodes={nodes} needs the processes of every node started by a cluster launcher, and none "
            "is here (no SLURM_NTASKS, no MASTER_ADDR/NODE_RANK): run under SLURM with "
            "`srun python train.py hw=multinode ...`, or `torchrun --nnodes=N ... train.py hw=ddp trainer.num_nodes=N`"
        )


def _check_xla(trainer_cfg: DictConfig) -> None:
    """torch_xla is here, with TPU devices, and the device count, strategy and precision are ones XLA runs."""
    from vit_exp.compat import xla_available
    from vit_exp.xla import PRECISIONS as XLA_PRECISIONS

    if str(trainer_cfg.get("precision")) not in XLA_PRECISIONS:
        raise HardwareError(
            f"trainer.precision={trainer_cfg.get('precision')} does not run on XLA; set trainer.precision to one of "
            f"{', '.join(XLA_PRECISIONS)}"
        )
    if not xla_available():
        raise HardwareError(
            "hw=tpu needs torch_xla, which is not installed in this environment (it pins its own torch): create one "
            "with `bash scripts/xla_env.sh VENV_DIR` on the TPU VM, or choose hw=gpu or hw=cpu"
        )
    from lightning.pytorch.accelerators import XLAAccelerator

    if not XLAAccelerator.is_available():
        raise HardwareError(
            "hw=tpu runs on torch_xla and needs TPU devices; this machine has none. "
            "The config above is valid: run the same command on a TPU VM, or choose hw=gpu or hw=cpu"
        )
    found, devices = XLAAccelerator.auto_device_count(), trainer_cfg.get("devices")
    if _whole(devices) and devices not in (1, found):
        raise HardwareError(
            f"trainer.devices={devices}: XLA runs on one device or on all {found} of this host; set "
            f"trainer.devices={found} (or trainer.devices=1)"
        )
    if trainer_cfg.get("strategy") == "xla" and devices == 1:
        raise HardwareError(
            "trainer.strategy=xla with trainer.devices=1: Lightning's XLAStrategy needs several devices; set "
            "trainer.strategy=auto (SingleDeviceXLAStrategy on one device, XLAStrategy on several)"
        )


def check_training_batches(images: int | None, ranks: int, batch_size: int) -> None:
    """A training split must give every rank at least one full batch (training loaders drop the last one).

    Repeated augmentation (``data.repeated_aug``) does not change the count: each rank draws as many as without it.

    Args:
        images: Training images (None: a stream of unknown length, not checked).
        ranks: Processes that share them (devices x nodes).
        batch_size: ``data.batch_size``, per rank.

    Raises:
        ConfigError: fewer images per rank than one batch, with the counts and the fix.
    """
    if images is None:
        return
    per_rank = math.ceil(images / ranks)  # a distributed sampler pads every rank to the same count
    if per_rank < batch_size:
        on = f"on {ranks} rank{'s' if ranks > 1 else ''}"
        share = f" ({per_rank} per rank)" if ranks > 1 else ""
        raise ConfigError(
            f"{images} training images {on}{share} < data.batch_size={batch_size}: no full training batch "
            f"(the last, partial one is dropped); lower data.batch_size to at most {max(per_rank, 1)}"
        )


def check_trained(global_step: int, resumed: bool = False) -> None:
    """After fit: a run whose model took no optimizer step must not report figures that look trained.

    ``global_step`` counts the steps of the checkpoint a run resumed from: a resumed run whose fit had nothing
    left to do still tests a trained model, and passes.

    Raises:
        ConfigError: the weights are still the initial ones (``global_step == 0``).
    """
    if global_step == 0:
        how = " (the checkpoint it resumed from had none either)" if resumed else ""
        raise ConfigError(
            f"the run took 0 optimizer steps{how}, so its model is untrained and no figures are reported; check "
            "trainer.max_steps / trainer.max_epochs / trainer.limit_train_batches and that the training split "
            "gives full batches of data.batch_size"
        )
