"""What ``train.py`` and ``eval.py`` do: check the config, build the parts, fit or test, report.

The orchestration only: the checks live in ``vit_exp.checks`` (an impossible run fails in a second, before any
model or data is built), the builders in ``vit_exp.build``, the figures in ``vit_exp.results``. Heavy libraries
are imported past the checks.
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from vit_exp.build import (
    batch_plan,
    build_model,
    build_module,
    build_trainer,
    data_errors,
    prepare,
    restore_training_run,
    typed_keys,
)
from vit_exp.checkpoints import checkpoint_config
from vit_exp.checks import check_trained, check_training_batches, check_val_interval
from vit_exp.errors import ConfigError
from vit_exp.results import Results, checkpoint_callbacks, model_card_results, percent, print_summary, report

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> Results:
    """Fit ``cfg`` (a composed ``conf/train.yaml``), test the best checkpoint, write ``results.json``.

    Raises:
        ConfigError: the config cannot run (``vit_exp.checks``), the training split gives no full batch, or the
            run ends without a single optimizer step.
    """
    start = time.perf_counter()
    spec, datamodule = prepare(cfg)
    import copy

    from lightning.pytorch.strategies import FSDPStrategy

    from vit_exp.callbacks import Throughput
    from vit_exp.checkpoints import resume_path
    from vit_exp.hw import resume_gc
    from vit_exp.launch import ddp_job
    from vit_exp.tracking import finish_runs

    ckpt_path = resume_path(cfg)  # ckpt_path, or with resume=auto this run directory's last checkpoint
    throughput = Throughput()
    trainer = build_trainer(cfg, [throughput])
    batch = batch_plan(cfg, trainer)
    log.info("%s", batch.describe())
    with data_errors():
        datamodule.setup("fit")  # Lightning's own setup call then finds the splits built
    images, ranks = _length(datamodule.datasets["train"]), batch.devices * batch.nodes
    check_training_batches(images, ranks, batch.per_device)
    check_val_interval(cfg.trainer, images, ranks, batch.per_device)
    backbone = build_model(spec, cfg.model)  # past every check: the Trainer and the splits are built
    module = build_module(cfg, backbone, datamodule, lr=batch.lr)
    # FSDP leaves the module's parameters as views into its shards after fit; the test wraps the module again and
    # loads the best (sharded) checkpoint into it, which needs the module as it was before fit.
    test_module = copy.deepcopy(module) if isinstance(trainer.strategy, FSDPStrategy) else module
    params = sum(p.numel() for p in backbone.parameters())  # before fit: FSDP leaves each rank its shard
    # W&B runs end with the job's exit status; a sweep's next job in this process starts clean.
    # ddp_job: DDP ranks 1..N-1 in this job's run directory, writing nothing of their own.
    resume_gc()  # start-up is over: what it built is frozen out of the collector's sight
    with finish_runs(trainer.loggers), ddp_job(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        check_trained(trainer.global_step, resumed=ckpt_path is not None)
        best_cb, last_cb = checkpoint_callbacks(trainer)
        best = (best_cb.best_model_path or None) if best_cb else None
        last = (last_cb.best_model_path or None) if last_cb else None  # read before test() restores callback states
        best_val_top1 = percent(best_cb.best_model_score) if best_cb else None
        trainer.test(test_module, datamodule=datamodule, ckpt_path=best, verbose=False)

        return report(
            trainer,
            datamodule,
            spec.arch,
            params,
            str(cfg.paths.output_dir),
            start,
            print_summary,
            images_per_s=_rounded(throughput.images_per_s, 1),
            images_per_s_steady=_rounded(throughput.images_per_s_steady, 1),
            input_wait_share=_rounded(throughput.input_wait_share, 4),
            device_gap_share=_rounded(throughput.device_gap_share, 4),
            checkpoint=best,
            last_checkpoint=last,
            best_val_top1=best_val_top1,
            steps=trainer.global_step,
        )


def evaluate(cfg: DictConfig) -> Results:
    """Test a checkpoint of ours (``ckpt_path``: its architecture and preprocessing come with it) or published
    weights (``model.pretrained``); print the figures in the model card's form, beside the published ones; write
    ``results.json``."""
    start = time.perf_counter()
    if not cfg.get("ckpt_path") and not cfg.model.get("pretrained"):
        raise ConfigError(
            "nothing to evaluate: pass ckpt_path=outputs/DATE/TIME/checkpoints/best.ckpt (a run of ours) or "
            "model=<family> res=<size> model.pretrained=<weights file> (published weights)"
        )
    with open_dict(cfg):
        if cfg.get("split"):
            cfg.data.test_split = cfg.split
        # a stream's training length (data=jft's samples_per_epoch.train=???) is not asked for where nothing trains
        counts = OmegaConf.select(cfg, "data.source.samples_per_epoch")
        if isinstance(counts, DictConfig) and OmegaConf.is_missing(counts, "train") and not _fewshot(cfg):
            counts.train = None
    if cfg.get("ckpt_path"):
        restore_training_run(cfg, checkpoint_config(cfg.ckpt_path), typed_keys())
    spec, datamodule = prepare(cfg)
    trainer = build_trainer(cfg, [], with_config_callbacks=False)
    with data_errors():
        datamodule.setup("test")  # as in train: Lightning's own call finds the split built
    backbone = build_model(spec, cfg.model)  # past every check, as in train
    if cfg.get("ckpt_path"):
        from vit_exp.checkpoints import load_weights

        load_weights(backbone, cfg.ckpt_path, use_ema=cfg.get("use_ema", True))
    from vit_exp.hw import resume_gc
    from vit_exp.module import ViTModule

    module = ViTModule(backbone, num_classes=datamodule.num_classes, multi_label=datamodule.multi_label)
    resume_gc()
    trainer.test(module, datamodule=datamodule, verbose=False)
    fewshot = None
    if _fewshot(cfg):
        from vit_exp.fewshot_eval import fewshot_eval

        device = trainer.strategy.root_device
        accuracy = fewshot_eval(backbone.to(device), datamodule, test_split=datamodule.test_split, device=device,
                                **cfg.fewshot)  # fmt: skip
        fewshot = {str(k): percent(v) for k, v in accuracy.items()}

    # The published file's figures, only when the model holds exactly that file: not for a run of ours (trained
    # on other data, or fine-tuned), nor for another published file resampled to this architecture.
    weights = None if cfg.get("ckpt_path") else backbone.spec.weights
    return report(
        trainer,
        datamodule,
        spec.arch,
        sum(p.numel() for p in backbone.parameters()),
        str(cfg.paths.output_dir),
        start,
        lambda r: print(model_card_results(r)),
        checkpoint=str(cfg.get("ckpt_path") or cfg.model.get("pretrained") or "") or None,
        published_top1=weights and weights.top1,
        published_top5=weights and weights.top5,
        fewshot=fewshot,
    )


def _fewshot(cfg: DictConfig) -> bool:
    """Few-shot evaluation is asked for (``fewshot.shots=[...]``): it draws images from a training split."""
    return bool((cfg.get("fewshot") or {}).get("shots"))


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _length(dataset: object) -> int | None:
    """A dataset's length; None for a stream (an IterableDataset of unknown length)."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
