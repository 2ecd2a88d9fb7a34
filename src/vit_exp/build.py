"""Building a run's parts from its checked config: the data module (with the model's preprocessing), the
backbone, the LightningModule (the ``module:`` node), the Trainer, and the run's batch plan.

Each builder receives its own slice of the config. Errors that our own classes raise inside Hydra's
``instantiate`` reach the user as the ``ConfigError`` they are, not wrapped in Hydra's "Error in call to target".
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vit_exp.errors import ConfigError

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from vit_exp.data.datamodule import ViTDataModule
    from vit_exp.models import ModelSpec
    from vit_exp.module import ViTModule
    from vit_exp.scaling import BatchPlan

log = logging.getLogger(__name__)


@contextmanager
def our_errors() -> Iterator[None]:
    """Re-raise a ``ConfigError`` that Hydra's ``instantiate`` wrapped (its ``InstantiationException``) as itself."""
    from hydra.errors import InstantiationException

    try:
        yield
    except InstantiationException as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


@contextmanager
def data_errors() -> Iterator[None]:
    """What a data source refuses when it builds its splits (shards that do not exist, fewer shards than ranks, a
    stream without ``samples_per_epoch.train``) as a ``ConfigError``: the user's data or its settings, before fit."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"data.source: {e}") from None


@contextmanager
def trainer_errors() -> Iterator[None]:
    """What Lightning's ``Trainer`` refuses in its arguments (an unknown accelerator or strategy, a strategy whose
    package is missing, a stray keyword) as a ``ConfigError`` with Lightning's own message, which names the
    argument; our own errors (a callback's, a logger's) as themselves."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        with our_errors():
            yield
    except InstantiationException as e:
        if isinstance(e.__cause__, (MisconfigurationException, ValueError, TypeError)):
            raise ConfigError(f"Lightning's Trainer refuses the trainer settings: {e.__cause__}") from None
        raise


def build_datamodule(data_cfg: DictConfig, preprocessing: Any) -> ViTDataModule:
    """Instantiate ``conf/data``, taking the model's ``preprocessing`` (a ``ModelSpec``'s: ``mean``, ``std``,
    ``crop_pct``, ``interpolation``) where the config leaves it null."""
    from hydra.utils import instantiate

    from vit_exp.models import PREPROCESSING

    defaults = {
        k: list(v) if isinstance(v, tuple) else v for k in PREPROCESSING if (v := getattr(preprocessing, k)) is not None
    }
    chosen = {k: defaults[k] for k in PREPROCESSING if data_cfg.get(k) is None}
    with our_errors():
        return instantiate(data_cfg, _convert_="all", **chosen)


def build_model(spec: ModelSpec, model_cfg: DictConfig) -> Any:
    """The backbone ``spec`` describes, with the weights (``model.pretrained``) and memory setting of ``model_cfg``."""
    from vit_exp.models import create_model

    pretrained, memory = model_cfg.get("pretrained"), bool(model_cfg.get("grad_checkpointing"))
    flexi = OmegaConf.to_container(model_cfg.flexi, resolve=True) if model_cfg.get("flexi") else None  # FlexiViT
    try:
        if pretrained and Path(pretrained).is_dir():  # a sharded (FSDP) checkpoint of ours: not a published format
            from vit_exp.checkpoints import load_weights
            from vit_exp.models.spec import with_weights_file

            backbone = create_model(with_weights_file(spec, pretrained), grad_checkpointing=memory, flexi=flexi)
            load_weights(backbone, pretrained)
            return backbone
        return create_model(spec, pretrained=pretrained, grad_checkpointing=memory, flexi=flexi)
    except ValueError as e:  # a file that is no checkpoint, or one of another architecture (the loaders say which)
        if not pretrained:
            raise
        raise ConfigError(f"model.pretrained={pretrained}: {e}") from None


def build_module(cfg: DictConfig, backbone: Any, datamodule: ViTDataModule, lr: float) -> ViTModule:
    """The ``module:`` node (a partial ``ViTModule``: loss, optimizer, schedule, mixup, compile) given the backbone,
    the data's classes, the run's config (stored in checkpoints) and the optimizer's learning rate ``lr``."""
    from hydra.utils import instantiate

    node = OmegaConf.to_container(cfg.module, resolve=True)
    node["optimizer"]["lr"] = lr  # the batch plan's: the recipe's optim.lr scaled to this run's global batch
    node["layer_decay"] = node["optimizer"].pop("layer_decay", None)  # ours, not the torch optimizer's
    with our_errors():
        factory = instantiate(node)
    return factory(
        backbone,
        scheduler=plain_schedule(factory.keywords.get("scheduler")),
        num_classes=datamodule.num_classes,
        multi_label=datamodule.multi_label,
        config=OmegaConf.to_container(cfg, resolve=True),
        class_names=datamodule.source.class_names,
        distillation=build_distillation(cfg.get("distill"), datamodule, int(cfg.model.img_size)),
    )


def plain_schedule(schedule: Any) -> Any:
    """The ``sched`` partial as a plain ``functools.partial``, checked once through Hydra's wrapper.

    Hydra (1.3.8) returns ``_partial_: true`` targets as a partial that re-validates its target policy at every
    call (a JSON dump and a hash of the whole policy, ~60 us). ``LambdaLR`` calls the schedule once per parameter
    group every optimizer step: 0.3 ms of the default run's ~30 ms step. One call through the wrapper here, before
    training, lets the policy refuse what it refuses; the steps then call the function itself.
    """
    if not isinstance(schedule, functools.partial) or type(schedule) is functools.partial:
        return schedule
    schedule(0, total_steps=1)
    return functools.partial(schedule.func, *schedule.args, **schedule.keywords)


def build_distillation(distill_cfg: DictConfig | None, datamodule: ViTDataModule, img_size: int) -> Any:
    """The ``distill`` group (``distill=hard``: DeiT's teacher and loss) as a ``vit_exp.distill.Distillation``,
    its teacher loaded once for the data's classes and input; None without the group."""
    if not distill_cfg:
        return None
    from vit_exp.distill import Distillation, load_teacher

    teacher = distill_cfg.teacher
    return Distillation(
        load_teacher(teacher.checkpoint, datamodule.num_classes, img_size, datamodule.mean, datamodule.std,
                     name=teacher.get("name")),
        kind=distill_cfg.kind,
        alpha=float(distill_cfg.alpha),
        tau=float(distill_cfg.tau),
    )  # fmt: skip


def build_trainer(cfg: DictConfig, callbacks: list[Any], with_config_callbacks: bool = True) -> pl.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` (hardware profile included), its callbacks and loggers."""
    from hydra.utils import instantiate

    if with_config_callbacks:
        made = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        callbacks = [c for c in made if c is not None] + callbacks  # None: switched off (callbacks.ema.decay=null)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    with trainer_errors():
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


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


def restore_training_run(cfg: DictConfig, stored: Mapping[str, Any], typed: set[str]) -> None:
    """Give an evaluation config (``eval.py ckpt_path=...``) the architecture and the preprocessing of the run that
    wrote the checkpoint, whose config is ``stored``; preprocessing keys the user typed (``typed``, e.g.
    ``{"data.crop_pct"}``) keep their value.

    Raises:
        ConfigError: the checkpoint's head has another number of classes than the data.
    """
    from vit_exp.models import PREPROCESSING

    model = stored["model"]
    if cfg.data.num_classes not in (None, model["num_classes"]):
        raise ConfigError(
            f"{cfg.ckpt_path} was trained for {model['num_classes']} classes but this data has "
            f"{cfg.data.num_classes}; evaluate it on the data it was trained on (data=...)"
        )
    with open_dict(cfg):
        # model.flexi.eval_patch_size=N on the command line: evaluate at another patch size than the run's (FlexiViT)
        flexi = {k: v for k, v in (cfg.model.get("flexi") or {}).items() if f"model.flexi.{k}" in typed}
        cfg.model = {**model, "pretrained": None}  # the architecture it was trained as; its weights are loaded later
        if flexi:
            cfg.model.flexi = {**(model.get("flexi") or {}), **flexi}
        trained_data = stored.get("data") or {}
        for key in PREPROCESSING:
            if key in trained_data and f"data.{key}" not in typed:  # null: the model's, as in training
                cfg.data[key] = trained_data[key]


def typed_keys() -> set[str]:
    """The keys given on the command line of this Hydra job (``data.crop_pct=0.9``, ``+x=1``); empty outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def tidy_console() -> None:
    """One line per Lightning message (Hydra's handler, not a second one of Lightning's), and no noise."""
    import lightning.pytorch  # noqa: F401  (sets up Lightning's loggers)

    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "Tip:" not in r.getMessage())
    # Hydra creates the run directory (config, log) before the CSV logger writes metrics.csv into it.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs newer torch


def describe(cfg: DictConfig, name: str) -> str:
    """One line: the model, the data, the hardware and where the run writes."""
    t = cfg.trainer
    strategy = t.strategy if isinstance(t.strategy, str) else t.strategy.get("_target_", "?").rsplit(".", 1)[-1]
    return (
        f"{name} on {cfg.data.get('name') or 'data'}; {t.accelerator} x {t.devices}, strategy {strategy}, "
        f"precision {t.precision}; output {cfg.paths.output_dir}"
    )


def prepare(cfg: DictConfig) -> tuple[ModelSpec, ViTDataModule]:
    """Validate, check the hardware, seed; then build the data module (its loaders' batches must fit in shared
    memory). The backbone comes later (``build_model``), once the Trainer and the data's splits are built: what
    they refuse stops the run before a model (perhaps a large pretrained one) is made.

    Returns:
        (the model's ``ModelSpec``, with the data's class count where the config leaves it null; the data module).
    """
    from vit_exp.checks import check_hardware, check_shared_memory, resolve_model, validate
    from vit_exp.hw import apply_matmul_precision, apply_threads
    from vit_exp.rules import read_devices

    spec = validate(cfg)
    check_hardware(cfg.trainer)
    log.info("config is valid: %s", describe(cfg, spec.arch))
    apply_threads(cfg.get("hw"))
    apply_matmul_precision(cfg.get("hw"), str(cfg.trainer.accelerator))
    tidy_console()
    import lightning.pytorch as pl

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, spec.preprocessing)
    if datamodule.device_decode is None:  # device decoding hands over file bytes: their size is the files'
        sizes = {"data.batch_size": datamodule.batch_size, "data.eval_batch_size": datamodule.eval_batch_size}
        key = max(sizes, key=sizes.__getitem__)  # the larger one: data.batch_size where they are equal
        processes = read_devices(cfg.trainer.devices).processes  # valid: validate() read it
        check_shared_memory(datamodule.num_workers, sizes[key], datamodule.img_size, processes, key)
    if spec.num_classes != datamodule.num_classes:  # a config that leaves the head's size to the data (null)
        spec = resolve_model(cfg.model, num_classes=datamodule.num_classes)
    return spec, datamodule
