"""Checks that stop an impossible run before it costs anything: the composed config, the hardware, the data's
batches, and (after fit) that training took place.

Every check raises a user error (``vit_exp.errors``) whose message names the key, the bad value and the fix;
the command line prints it as one ``error: ...`` line. Only ``check_hardware`` imports torch or Lightning.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from vit_exp.errors import ConfigError, HardwareError
from vit_exp.hw import LOADER_PREFETCH, SHM, batches_in_shm, shm_size, shm_workers
from vit_exp.rules import UNSET, Devices, check_values, is_sharded, read_devices, shown, whole

if TYPE_CHECKING:
    from vit_exp.models import ModelSpec


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
    _check_flexi(cfg, spec)
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


def resolve_model(model_cfg: DictConfig, num_classes: Any = UNSET) -> ModelSpec:
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
    for key in ("pretrained", "grad_checkpointing", "flexi"):  # how to build it, not what it is
        args.pop(key, None)
    if num_classes is not UNSET:
        args["num_classes"] = num_classes
    try:
        return resolve_spec(**args)
    except (TypeError, ValueError) as e:
        m = model_cfg
        raise ConfigError(f"model {m.name} with patch={m.patch_size} res={m.img_size}: {e}") from None


def _check_flexi(cfg: DictConfig, spec: ModelSpec) -> None:
    """FlexiViT (``model.flexi``): every patch size it runs at divides the resolution, on a plain ViT, with the
    callback that draws the training sizes."""
    from vit_exp.models.flexi import divisors

    flexi = cfg.model.get("flexi") or {}
    sizes, res = list(flexi.get("patch_sizes") or []), spec.img_size
    for key, p in [("patch_sizes", p) for p in sizes] + [("eval_patch_size", flexi.get("eval_patch_size"))]:
        if p is not None and res % p:
            raise ConfigError(f"model.flexi.{key}: patch {p} does not divide res={res}; use sizes from "
                              f"{divisors(res)}, or a res that every size divides")  # fmt: skip
    if (sizes or flexi.get("eval_patch_size")) and spec.kwargs.get("hybrid_layers"):
        raise ConfigError(f"model.flexi needs a plain ViT: {cfg.model.name}'s ResNet stem has no patch kernel to resize")
    if sizes and "flexi" not in (cfg.get("callbacks") or {}):
        raise ConfigError("model.flexi.patch_sizes is drawn per step by callbacks.flexi, which this callbacks group "
                          "lacks; use callbacks=default (or set model.flexi.patch_sizes=null)")  # fmt: skip


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, without resolving interpolations (which would fail on them first)."""
    keys = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            keys.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            keys += _missing_keys(cfg[key], f"{prefix}{key}.")
    return keys


def check_paths(cfg: DictConfig) -> None:
    """``data.root``, ``model.pretrained``, ``distill.teacher.checkpoint``, ``ckpt_path`` (a checkpoint of ours) exist.

    Raises:
        ConfigError: a path with nothing there, or a ``ckpt_path`` that ``train.py`` did not write.
    """
    from vit_exp.checkpoints import checkpoint_hparams, no_checkpoint
    from vit_exp.distill import no_teacher

    root = OmegaConf.select(cfg, "data.root")
    if root and not Path(str(root)).expanduser().exists():
        raise ConfigError(
            f"data.root={root} does not exist; point data.root at the folder that holds the data "
            "(for image folders: train/ and val/ with one subfolder per class)"
        )
    pretrained = OmegaConf.select(cfg, "model.pretrained")
    if pretrained and not Path(pretrained).exists():  # a file, or the directory of a sharded (FSDP) checkpoint
        raise no_checkpoint(f"model.pretrained={pretrained}", Path(pretrained))
    teacher = OmegaConf.select(cfg, "distill.teacher.checkpoint")
    if teacher and not Path(teacher).is_file():
        raise no_teacher(teacher)
    if cfg.get("ckpt_path"):
        checkpoint_hparams(cfg.ckpt_path)  # raises on a path that is not a checkpoint written by train.py


# ---- hardware, batches, steps -------------------------------------------------------------------------------------


def check_hardware(trainer_cfg: DictConfig) -> None:
    """Fail with a clear message when the hardware profile asks for a device that is not here.

    Raises:
        HardwareError: TPU/XLA without torch_xla or a TPU (or with a device count, strategy or precision that XLA
            does not run), a GPU profile without CUDA or with more GPUs (or other GPU ids) than there are, a CPU
            run given -1 or device ids for its processes, FSDP on the CPU, or several nodes without a launcher
            that starts their processes.
    """
    accelerator, strategy = trainer_cfg.get("accelerator"), trainer_cfg.get("strategy")
    devices = trainer_cfg.get("devices")
    asked = read_devices(devices) or Devices()  # a form Lightning does not take: refused by validate() first
    if accelerator == "tpu" or strategy in ("xla", "single_xla"):
        _check_xla(trainer_cfg, asked)
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise HardwareError("this hardware profile needs a CUDA GPU and none is visible here; use hw=cpu")
        found = torch.cuda.device_count()
        if asked.count and asked.count > found:
            raise HardwareError(
                f"trainer.devices={devices} GPUs asked for, {found} visible here; set trainer.devices={found} "
                "(or -1: every visible GPU)"
            )
        if asked.ids and max(asked.ids) >= found:
            raise HardwareError(
                f"trainer.devices={shown(devices)} names GPU {max(asked.ids)}, and the GPUs visible here are 0 to "
                f"{found - 1}; name those (e.g. trainer.devices=[0]), or give a count (trainer.devices={found})"
            )
    if accelerator == "cpu" and is_sharded(strategy):
        raise HardwareError("Lightning runs FSDP on CUDA GPUs only; on the CPU use hw=ddp_sim (DDP over gloo)")
    if accelerator == "cpu" and not (asked.count or asked.auto):
        # Lightning's CPU accelerator takes a number of processes: -1 and device ids count or name GPUs
        raise HardwareError(
            f"trainer.devices={shown(devices)} on the CPU, which takes a number of processes, not -1 or device ids; "
            "set trainer.devices=1 (or auto), or e.g. hw=ddp_sim trainer.devices=2 for DDP over CPU processes"
        )
    nodes = trainer_cfg.get("num_nodes") or 1
    launched = "SLURM_NTASKS" in os.environ or {"MASTER_ADDR", "NODE_RANK"} <= set(os.environ)
    if nodes > 1 and not launched:
        raise HardwareError(
            f"trainer.num_nodes={nodes} needs the processes of every node started by a cluster launcher, and none "
            "is here (no SLURM_NTASKS, no MASTER_ADDR/NODE_RANK): run under SLURM with "
            "`srun python train.py hw=multinode ...`, or `torchrun --nnodes=N ... train.py hw=ddp trainer.num_nodes=N`"
        )


def _check_xla(trainer_cfg: DictConfig, asked: Devices) -> None:
    """torch_xla is here, with TPU devices, and the device count (``asked``: ``trainer.devices`` read), strategy and
    precision are ones XLA runs."""
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
            "The rest of the config is valid: run the same command on a TPU VM, or choose hw=gpu or hw=cpu"
        )
    found, devices, count = XLAAccelerator.auto_device_count(), trainer_cfg.get("devices"), asked.count
    if count is not None and count not in (1, found):
        raise HardwareError(
            f"trainer.devices={devices}: XLA runs on one device or on all {found} of this host; set "
            f"trainer.devices={found} (or trainer.devices=1)"
        )
    if trainer_cfg.get("strategy") == "xla" and count == 1:
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


def check_val_interval(trainer_cfg: DictConfig, images: int | None, ranks: int, batch_size: int) -> None:
    """A validation every ``trainer.val_check_interval`` steps (a whole number) must come within an epoch's training
    batches, as Lightning demands when fit starts (a ``ValueError`` there); streams of unknown length are not
    checked.

    Raises:
        ConfigError: the interval is longer than an epoch, with the epoch's batches and the fixes.
    """
    interval, limit = trainer_cfg.get("val_check_interval"), trainer_cfg.get("limit_train_batches")
    validates = trainer_cfg.get("check_val_every_n_epoch", 1) is not None and trainer_cfg.get("limit_val_batches", 1)
    if images is None or not whole(interval) or not validates:
        return
    batches = math.ceil(images / ranks) // batch_size  # per rank; training loaders drop the last, partial batch
    if whole(limit):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    if interval > batches:
        raise ConfigError(
            f"trainer.val_check_interval={interval} steps is longer than an epoch of {batches} training batches; set "
            f"it to at most {batches}, or to a fraction of an epoch (e.g. 0.5), or count steps across epochs with "
            "trainer.check_val_every_n_epoch=null"
        )


def check_shared_memory(
    workers: int,
    batch_size: int,
    img_size: int,
    processes: int = 1,
    batch_key: str = "data.batch_size",
    shm: Path = SHM,
) -> None:
    """Loader workers hand each batch over in shared memory: a /dev/shm too small for the batches in flight
    (``vit_exp.hw.batches_in_shm``) kills the run at its first batches with torch's ``unable to allocate shared
    memory``, after the model is built. This stops it first, with the sizes and the fix.

    The estimate is a floor: uint8 RGB images (what the image sources hand over; a float source hands over four
    times more).

    Args:
        processes: This node's processes (devices), each with its own workers.
        batch_key: The key that sets ``batch_size`` (``data.eval_batch_size`` where the evaluation's is larger).

    Raises:
        ConfigError: the batches in flight cannot fit in ``shm``'s size.
    """
    batch, size = batch_size * 3 * img_size**2, shm_size(shm)
    batches = batches_in_shm(workers) * processes
    if size is None or batches * batch <= size:
        return
    per = f" on each of {processes} processes" if processes > 1 else ""
    raise ConfigError(
        f"data.num_workers={workers}{per} with {batch_key}={batch_size} at {img_size} px keeps "
        f"{_mb(batches * batch)} of batches in {shm} ({batches} x {_mb(batch)}: {LOADER_PREFETCH} a worker and the "
        f"one being read), which holds {_mb(size)}: set data.num_workers={shm_workers(batch, processes, shm)}, or a "
        f"smaller {batch_key}, or give the machine more shared memory (a container: docker run --shm-size=8g)"
    )


def _mb(n: int) -> str:
    mb = n / 2**20
    return f"{mb:.1f} MB" if mb < 10 else f"{mb:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


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
