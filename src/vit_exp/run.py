"""What ``train.py`` and ``eval.py`` do: check the composed config, build the parts, fit or test, report.

The config is checked first (``validate``), so that an impossible run fails in a second with a message that
says how to fix it, before any model or data is built. Heavy libraries are imported only past that point.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vit_exp.checkpoints import checkpoint_config, no_checkpoint
from vit_exp.errors import ConfigError, HardwareError
from vit_exp.results import Results, model_card_results, print_summary

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from vit_exp.data.datamodule import ViTDataModule
    from vit_exp.models import PretrainedCfg
    from vit_exp.scaling import BatchPlan

log = logging.getLogger(__name__)

PREPROCESSING = ("crop_pct", "interpolation", "mean", "std")  # data keys that default to the model's


def validate(cfg: DictConfig) -> str:
    """Check a composed train/eval config without building anything; return the canonical model name.

    Raises:
        ConfigError: a mandatory value (``???``, or a key listed in ``required``) left unset, a missing checkpoint,
            an impossible model (unknown family, resolution not divisible by the patch, hybrid with patch 32), or
            sizes that disagree between model and data.
    """
    from vit_exp.models import resolve_name

    missing = _missing_keys(cfg) + [k for k in cfg.get("required") or () if OmegaConf.select(cfg, k) is None]
    if missing:
        raise ConfigError(f"this config needs values you have not given: {' '.join(k + '=...' for k in missing)}")
    for key in ("model.pretrained", "ckpt_path"):
        path = OmegaConf.select(cfg, key)
        if path and not Path(path).exists():  # a file, or the directory of a sharded (FSDP) checkpoint
            raise no_checkpoint(f"{key}={path}", Path(path))
    m = cfg.model
    try:
        name = resolve_name(m.name, m.patch_size, m.img_size)
    except ValueError as e:
        raise ConfigError(f"model {m.name} with patch={m.patch_size} res={m.img_size}: {e}") from None
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
    return name


def _missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Keys whose value is ``???``, without resolving interpolations (which would fail on them first)."""
    keys = []
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            keys.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(cfg, key) and isinstance(cfg[key], DictConfig):
            keys += _missing_keys(cfg[key], f"{prefix}{key}.")
    return keys


def check_hardware(trainer_cfg: DictConfig) -> None:
    """Fail with a clear message when the hardware profile asks for a device that is not here.

    Raises:
        HardwareError: TPU/XLA without a TPU, a GPU profile without CUDA or with more GPUs than there are,
            FSDP on the CPU, or several nodes without a launcher that starts their processes.
    """
    accelerator, strategy = trainer_cfg.get("accelerator"), trainer_cfg.get("strategy")
    if accelerator == "tpu" or strategy == "xla":
        from lightning.pytorch.accelerators import XLAAccelerator

        if not XLAAccelerator.is_available():
            raise HardwareError(
                "hw=tpu runs on the XLA strategy and needs TPU devices with torch_xla; this machine has none. "
                "The config above is valid: run the same command on a TPU VM, or choose hw=gpu or hw=cpu"
            )
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
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if accelerator == "cpu" and target.rsplit(".", 1)[-1] in ("FSDPStrategy", "AtomicFSDPStrategy", "fsdp"):
        raise HardwareError("Lightning runs FSDP on CUDA GPUs only; on the CPU use hw=ddp_sim (DDP over gloo)")
    nodes = trainer_cfg.get("num_nodes") or 1
    launched = "SLURM_NTASKS" in os.environ or {"MASTER_ADDR", "NODE_RANK"} <= set(os.environ)
    if nodes > 1 and not launched:
        raise HardwareError(
            f"trainer.num_nodes={nodes} needs the processes of every node started by a cluster launcher, and none "
            "is here (no SLURM_NTASKS, no MASTER_ADDR/NODE_RANK): run under SLURM with "
            "`srun python train.py hw=multinode ...`, or `torchrun --nnodes=N ... train.py hw=ddp trainer.num_nodes=N`"
        )


def preprocessing(model_cfg: DictConfig) -> PretrainedCfg:
    """The model's published preprocessing (mean, std, crop_pct, interpolation) at the configured size:
    the metadata that ``create_model`` gives the model built from ``model_cfg``."""
    from vit_exp.models import resolve_pretrained_cfg

    return resolve_pretrained_cfg(model_cfg.name, model_cfg.patch_size, model_cfg.img_size)


def build_datamodule(data_cfg: DictConfig, pcfg: PretrainedCfg) -> ViTDataModule:
    """Instantiate ``conf/data``, taking the model's preprocessing where the config leaves it null."""
    from hydra.utils import instantiate

    defaults = {k: list(v) if isinstance(v, tuple) else v for k in PREPROCESSING if (v := getattr(pcfg, k)) is not None}
    chosen = {k: defaults[k] for k in PREPROCESSING if data_cfg.get(k) is None}
    return instantiate(data_cfg, _convert_="all", **chosen)


def build_model(model_cfg: DictConfig, num_classes: int) -> Any:
    """``vit_exp.models.create_model`` with the model config as arguments."""
    from vit_exp.models import create_model

    kwargs = OmegaConf.to_container(model_cfg, resolve=True)
    kwargs["num_classes"] = num_classes
    return create_model(**kwargs)


def build_trainer(cfg: DictConfig, callbacks: list[Any], with_config_callbacks: bool = True) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` (hardware profile included), its callbacks and loggers."""
    from hydra.utils import instantiate

    if with_config_callbacks:
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + callbacks
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def _describe(cfg: DictConfig, name: str) -> str:
    t = cfg.trainer
    strategy = t.strategy if isinstance(t.strategy, str) else t.strategy.get("_target_", "?").rsplit(".", 1)[-1]
    return (
        f"{name} on {cfg.data.get('name') or 'data'}; {t.accelerator} x {t.devices}, strategy {strategy}, "
        f"precision {t.precision}; output {cfg.paths.output_dir}"
    )


def _tidy_console() -> None:
    """One line per Lightning message (Hydra's handler, not a second one of Lightning's), and no noise."""
    import lightning.pytorch  # noqa: F401  (sets up Lightning's loggers)

    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
    # Hydra creates the run directory (config, log) before the CSV logger writes metrics.csv into it.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs newer torch


def _prepare(cfg: DictConfig) -> tuple[str, Any, Any]:
    """Validate, check the hardware, seed; then build the data module and the backbone."""
    name = validate(cfg)
    log.info("config is valid: %s", _describe(cfg, name))
    check_hardware(cfg.trainer)
    _tidy_console()
    import lightning.pytorch as pl

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, preprocessing(cfg.model))
    return name, datamodule, build_model(cfg.model, datamodule.num_classes)


def _percent(value: Any) -> float | None:
    """A fraction (float or tensor) in percent, as the model card gives accuracies."""
    return None if value is None else round(100 * float(value), 4)


def _checkpoint_callbacks(trainer: pl.Trainer) -> tuple[Any, Any]:
    """(the checkpoint callback with a monitor: the best, the one without: the latest), either may be None."""
    callbacks = trainer.checkpoint_callbacks
    return next((c for c in callbacks if c.monitor), None), next((c for c in callbacks if not c.monitor), None)


def _report(
    cfg: DictConfig,
    name: str,
    datamodule: ViTDataModule,
    backbone: Any,
    trainer: pl.Trainer,
    start: float,
    show: Callable[[Results], None],
    params: int | None = None,
    **extra: Any,
) -> Results:
    """The figures of a run whose ``trainer.test`` has just finished; rank 0 saves and shows them.

    ``params``: the backbone's parameter count when it was taken before fit (FSDP leaves each rank its shard).
    """
    try:
        images = len(datamodule.datasets[datamodule.test_split])
    except (TypeError, KeyError):  # a stream of unknown length
        images = None
    results = Results(
        model=name,
        data=datamodule.name,
        split=datamodule.test_split,
        top1=_percent(trainer.callback_metrics.get("test/top1")),
        top5=_percent(trainer.callback_metrics.get("test/top5")),
        params=params if params is not None else sum(p.numel() for p in backbone.parameters()),
        wall_time_s=round(time.perf_counter() - start, 2),
        run_dir=str(cfg.paths.output_dir),
        images=images,
        **extra,
    )
    if trainer.is_global_zero:
        results.save(cfg.paths.output_dir)
        show(results)
    return results


def batch_plan(cfg: DictConfig, trainer: pl.Trainer) -> BatchPlan:
    """The run's global batch (per device x accumulation x devices x nodes) and the recipe's scaled lr."""
    from vit_exp.scaling import plan

    scaling = cfg.get("lr_scaling") or {}
    return plan(
        per_device=int(cfg.data.batch_size),
        accumulate=int(trainer.accumulate_grad_batches),
        devices=int(trainer.num_devices),
        nodes=int(trainer.num_nodes),
        base_lr=float(cfg.optim.lr),
        rule=scaling.get("rule") or "none",
        base_batch=scaling.get("base_batch"),
    )


def train(cfg: DictConfig) -> Results:
    """Fit ``cfg`` (a composed ``conf/train.yaml``), test the best checkpoint, write ``results.json``."""
    start = time.perf_counter()
    name, datamodule, backbone = _prepare(cfg)
    import copy

    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    from vit_exp.callbacks import Throughput
    from vit_exp.launch import ddp_job, use_child_command
    from vit_exp.module import ViTModule
    from vit_exp.resilience import resume_path
    from vit_exp.tracking import finish_runs

    ckpt_path = resume_path(cfg)  # ckpt_path, or with resume=auto this run directory's last checkpoint
    throughput = Throughput()
    trainer = build_trainer(cfg, [throughput])
    batch = batch_plan(cfg, trainer)
    log.info("%s", batch.describe())
    module = ViTModule(
        backbone,
        num_classes=datamodule.num_classes,
        multi_label=datamodule.multi_label,
        label_smoothing=cfg.loss.label_smoothing,
        optimizer=instantiate(cfg.optim, lr=batch.lr),
        scheduler=instantiate(cfg.sched) if cfg.get("sched") else None,
        compile=cfg.compile,
        config=OmegaConf.to_container(cfg, resolve=True),
        class_names=datamodule.source.class_names,
        mixup=OmegaConf.to_container(cfg.mixup) if cfg.get("mixup") else None,
    )
    use_child_command()  # DDP ranks 1..N-1 in this job's run directory, writing nothing of their own
    # FSDP leaves the module's parameters as views into its shards after fit; the test wraps the module again and
    # loads the best (sharded) checkpoint into it, which needs the module as it was before fit.
    test_module = copy.deepcopy(module) if isinstance(trainer.strategy, FSDPStrategy) else module
    params = sum(p.numel() for p in backbone.parameters())
    # W&B runs end with the job's exit status; a sweep's next job in this process starts clean.
    with finish_runs(trainer.loggers), ddp_job(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        best_cb, last_cb = _checkpoint_callbacks(trainer)
        best = (best_cb.best_model_path or None) if best_cb else None
        last = (last_cb.best_model_path or None) if last_cb else None  # read before test() restores callback states
        best_val_top1 = _percent(best_cb.best_model_score) if best_cb else None
        trainer.test(test_module, datamodule=datamodule, ckpt_path=best, verbose=False)

        return _report(
            cfg,
            name,
            datamodule,
            backbone,
            trainer,
            start,
            print_summary,
            params=params,
            images_per_s=throughput.images_per_s and round(throughput.images_per_s, 1),
            checkpoint=best,
            last_checkpoint=last,
            best_val_top1=best_val_top1,
            steps=trainer.global_step,
        )


def evaluate(cfg: DictConfig) -> Results:
    """Test a checkpoint of ours (``ckpt_path``) or published weights (``model.pretrained``); print the
    figures in the model card's form, beside the published ones; write ``results.json``."""
    start = time.perf_counter()
    if not cfg.get("ckpt_path") and not cfg.model.get("pretrained"):
        raise ConfigError(
            "nothing to evaluate: pass ckpt_path=outputs/DATE/TIME/checkpoints/best.ckpt (a run of ours) or "
            "model=<family> res=<size> model.pretrained=<weights file> (published weights)"
        )
    with open_dict(cfg):
        if cfg.get("split"):
            cfg.data.test_split = cfg.split
        if cfg.get("ckpt_path"):
            stored = checkpoint_config(cfg.ckpt_path)["model"]
            if cfg.data.num_classes not in (None, stored["num_classes"]):
                raise ConfigError(
                    f"{cfg.ckpt_path} was trained for {stored['num_classes']} classes but this data has "
                    f"{cfg.data.num_classes}; evaluate it on the data it was trained on (data=...)"
                )
            cfg.model = {**stored, "pretrained": None}  # the architecture it was trained as; weights below
    name, datamodule, backbone = _prepare(cfg)
    if cfg.get("ckpt_path"):
        from vit_exp.models import load_checkpoint

        load_checkpoint(backbone, cfg.ckpt_path)
    from vit_exp.module import ViTModule

    module = ViTModule(backbone, num_classes=datamodule.num_classes, multi_label=datamodule.multi_label)
    trainer = build_trainer(cfg, [], with_config_callbacks=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    fewshot = None
    if (cfg.get("fewshot") or {}).get("shots"):
        from vit_exp.insight import fewshot_eval

        device = trainer.strategy.root_device
        accuracy = fewshot_eval(backbone.to(device), datamodule, test_split=datamodule.test_split, device=device,
                                **cfg.fewshot)  # fmt: skip
        fewshot = {str(k): _percent(v) for k, v in accuracy.items()}

    pcfg = backbone.pretrained_cfg
    return _report(
        cfg,
        name,
        datamodule,
        backbone,
        trainer,
        start,
        lambda r: print(model_card_results(r)),
        checkpoint=str(cfg.get("ckpt_path") or cfg.model.get("pretrained") or "") or None,
        published_top1=pcfg.top1,
        published_top5=pcfg.top5,
        fewshot=fewshot,
    )
