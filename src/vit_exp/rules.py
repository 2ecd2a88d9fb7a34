"""The values users type: a ``Rule`` per key (its accepted values, described, with an example), checked by
``check_values`` before anything is built; ``vit_exp.checks.validate`` runs it on every composed config."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vit_exp.errors import ConfigError

# Lightning 2.6's accepted trainer.precision values (lightning.fabric.connector._PRECISION_INPUT).
PRECISIONS = (
    "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
    "32-true", "64-true", "64", "32", "16", "bf16",
)  # fmt: skip
UNSET = object()
DISTILL_KINDS = ("soft", "hard")  # vit_exp.distill's losses (conf/distill)
ACCELERATORS = ("cpu", "gpu", "cuda", "tpu", "mps", "auto")  # trainer.accelerator: Lightning's names
SPLITS = ("train", "val", "test")  # eval.py split=, data.test_split: what a data source serves
INTERPOLATIONS = ("bicubic", "bilinear", "box", "hamming", "lanczos", "nearest")  # data.interpolation: PIL's filters
DECODES = ("host", "device")  # data.decode: where JPEGs are decoded (vit_exp.data.device_decode)
WAIT_POLICIES = ("auto", "passive", "active")  # hw.omp_wait_policy (vit_exp.hw)
MATMUL_PRECISIONS = ("highest", "high", "medium")  # hw.matmul_precision: torch.set_float32_matmul_precision's


def whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Devices:
    """``trainer.devices`` as Lightning reads it: a count (``2``, ``"2"``), every device (``-1``), ``auto``, or
    device ids (``[0, 1]``, ``"0,1"``, ``"3,"``)."""

    count: int | None = None
    ids: tuple[int, ...] = ()
    every: bool = False
    auto: bool = False

    @property
    def processes(self) -> int:
        """The processes one node runs, each with its own loader workers (1 for auto or -1: a floor)."""
        return self.count or len(self.ids) or 1


def read_devices(v: Any) -> Devices | None:
    """``trainer.devices`` read as Lightning reads it (its ``_parse_devices``); None for a form it does not take."""
    if isinstance(v, str):
        v = v.strip()
        if v in ("auto", "-1"):
            return Devices(auto=v == "auto", every=v == "-1")
        if "," in v:
            parts = [p.strip() for p in v.split(",") if p.strip()]
            return Devices(ids=tuple(map(int, parts))) if parts and all(p.isdigit() for p in parts) else None
        return Devices(count=int(v)) if v.isdigit() and int(v) >= 1 else None
    if whole(v):
        return Devices(count=v) if v >= 1 else Devices(every=True) if v == -1 else None
    if isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(whole(d) and d >= 0 for d in v):
        return Devices(ids=tuple(v))
    return None


def _devices(v: Any) -> bool:
    return read_devices(v) is not None


def _numbers(v: Any, n: int) -> bool:
    return isinstance(v, (list, tuple, ListConfig)) and len(v) == n and all(_number(x) for x in v)


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
        Rule("seed", lambda v: v is None or whole(v), "a whole number", "0"),
        Rule("trainer.max_epochs", lambda v: v is None or whole(v) and (v >= 1 or v == -1),
             f"{count} (or -1: no limit, max_steps decides)", "10"),
        Rule("trainer.max_steps", lambda v: whole(v) and (v >= 1 or v == -1),
             f"{count}, or -1 (max_epochs decides)", "1000"),
        Rule("trainer.accelerator", lambda v: v in ACCELERATORS, f"one of {', '.join(ACCELERATORS)} (or a hw= profile)",
             "gpu"),
        Rule("trainer.devices", _devices, "a device count >= 1, -1 (every device), auto, or a list of ids", "1"),
        Rule("trainer.num_nodes", lambda v: whole(v) and v >= 1, count, "1"),
        Rule("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS[2:8])}", "32-true"),
        Rule("trainer.log_every_n_steps", lambda v: whole(v) and v >= 1, count, "10"),
        Rule("trainer.gradient_clip_val", lambda v: v is None or _number(v) and v >= 0,
             "a number >= 0 (0 or null: no clipping)", "1.0"),
        Rule("trainer.accumulate_grad_batches", lambda v: whole(v) and v >= 1, count, "1"),
        Rule("trainer.check_val_every_n_epoch", lambda v: v is None or whole(v) and v >= 1, count, "1"),
        Rule("data.batch_size", lambda v: whole(v) and v >= 1, count, "64"),
        Rule("data.eval_batch_size", lambda v: v is None or whole(v) and v >= 1, f"{count} (or null)", "256"),
        Rule("data.num_workers", lambda v: whole(v) and v >= 0, "a whole number >= 0", "4"),
        Rule("data.repeated_aug", lambda v: whole(v) and v >= 1, f"{count} (1: off)", "3"),
        Rule("split", lambda v: v is None or v in SPLITS, f"one of {', '.join(SPLITS)} (or null: data.test_split)",
             "val"),
        Rule("data.test_split", lambda v: v in SPLITS, f"one of {', '.join(SPLITS)}", "val"),
        Rule("data.crop_pct", lambda v: v is None or _number(v) and 0 < v <= 1,
             "a number in (0, 1] (or null: the model's)", "0.875"),
        Rule("data.interpolation", lambda v: v is None or v in INTERPOLATIONS,
             f"one of {', '.join(INTERPOLATIONS)} (or null: the model's)", "bicubic"),
        Rule("data.mean", lambda v: v is None or _numbers(v, 3), "three numbers, one per channel (or null)",
             "[0.5,0.5,0.5]"),
        Rule("data.std", lambda v: v is None or _numbers(v, 3) and all(x > 0 for x in v),
             "three numbers > 0, one per channel (or null)", "[0.5,0.5,0.5]"),
        Rule("data.decode", lambda v: v in DECODES, " or ".join(DECODES), "device"),
        Rule("optim.lr", lambda v: _number(v) and v > 0, "a number > 0", "1e-3"),
        Rule("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0", "0.05"),
        Rule("optim.betas", lambda v: _numbers(v, 2) and all(0 <= b < 1 for b in v), "two numbers in [0, 1)",
             "[0.9,0.999]"),
        Rule("optim.eps", lambda v: _number(v) and v > 0, "a number > 0", "1e-8"),
        Rule("optim.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", "0.9"),
        Rule("optim.layer_decay", lambda v: v is None or _number(v) and 0 < v <= 1, "a number in (0, 1] (or null)",
             "0.65"),
        Rule("distill.kind", lambda v: v in DISTILL_KINDS, f"one of {', '.join(DISTILL_KINDS)}", "hard"),
        Rule("distill.alpha", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]", "0.5"),
        Rule("distill.tau", lambda v: _number(v) and v > 0, "a number > 0", "1.0"),
        Rule("sched.warmup_steps", lambda v: whole(v) and v >= 0, "a whole number >= 0", "100"),
        Rule("sched.min_lr_ratio", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]", "0.0"),
        Rule("sched.decay", lambda v: v in DECAYS, f"one of {', '.join(DECAYS)}", "cosine"),
        Rule("loss.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)", "0.1"),
        Rule("lr_scaling.rule", lambda v: v in RULES, f"one of {', '.join(RULES)}", "linear"),
        Rule("lr_scaling.base_batch", lambda v: v is None or whole(v) and v >= 1, f"{count} (or null)", "512"),
        Rule("compile", lambda v: isinstance(v, bool), "true or false", "true"),
        Rule("hw.threads", lambda v: v is None or v == "auto" or whole(v) and v >= 1,
             "auto or a whole number >= 1", "2"),
        Rule("hw.omp_wait_policy", lambda v: v is None or v in WAIT_POLICIES,
             f"one of {', '.join(WAIT_POLICIES)} (or null)", "passive"),
        Rule("hw.matmul_precision", lambda v: v is None or v in MATMUL_PRECISIONS,
             f"one of {', '.join(MATMUL_PRECISIONS)} (or null)", "high"),
        *(Rule(f"model.{k}", lambda v: _number(v) and 0 <= v < 1, "a probability in [0, 1)", "0.1")
          for k in ("drop_rate", "attn_drop_rate", "drop_path_rate")),
        Rule("model.flexi.patch_sizes", lambda v: v is None or isinstance(v, ListConfig) and len(v) > 0
             and all(whole(p) and p >= 1 for p in v), "a list of patch sizes (or null: the model's only)", "[2,4,8]"),
        Rule("model.flexi.eval_patch_size", lambda v: v is None or whole(v) and v >= 1,
             f"{count} (or null: the model's patch)", "8"),
        Rule("model.flexi.interpolation", lambda v: v in ("bilinear", "bicubic"), "bilinear or bicubic", "bicubic"),
        Rule("model.flexi.antialias", lambda v: isinstance(v, bool), "true or false", "true"),
        Rule("callbacks.ema.decay", lambda v: v is None or _number(v) and 0 < v < 1,
             "a number in (0, 1) (or null: no EMA)", "0.9998"),
        Rule("callbacks.ema.warmup", lambda v: isinstance(v, bool), "true or false", "true"),
        Rule("callbacks.ema.warmup_gamma", lambda v: _number(v) and v > 0, "a number > 0", "1.0"),
        Rule("callbacks.ema.warmup_power", lambda v: _number(v) and v > 0, "a number > 0", "0.75"),
        Rule("use_ema", lambda v: isinstance(v, bool), "true or false", "false"),
        Rule("topk", lambda v: whole(v) and v >= 1, count, "5"),  # predict.py's
        Rule("batch_size", lambda v: whole(v) and v >= 1, count, "32"),
        Rule("callbacks.preemption.check_every_n_steps", lambda v: v is None or whole(v) and v >= 1,
             f"{count} (or null: trainer.log_every_n_steps)", "10"),
        Rule("callbacks.nan_guard.action", lambda v: v in ("stop", "skip"), "stop or skip", "skip"),
        Rule("callbacks.nan_guard.max_consecutive_skips", lambda v: whole(v) and v >= 0, "a whole number >= 0",
             "10"),
    )  # fmt: skip


def shown(value: Any) -> str:
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
        value = OmegaConf.select(cfg, rule.key, default=UNSET)
        if value is not UNSET and not rule.ok(value):
            raise ConfigError(f"{rule.key}={shown(value)} is not {rule.want}; set e.g. {rule.key}={rule.example}")
    scaling = cfg.get("lr_scaling") or {}
    if scaling.get("rule") not in (None, "none") and not scaling.get("base_batch"):
        raise ConfigError(
            f"lr_scaling.rule={scaling.get('rule')} needs lr_scaling.base_batch, the global batch the recipe's "
            "optim.lr was tuned for; set e.g. lr_scaling.base_batch=512 (or lr_scaling.rule=none)"
        )
    _check_mixup(cfg.get("mixup"))
    repeats = OmegaConf.select(cfg, "data.repeated_aug", default=1)
    if repeats != 1 and str(OmegaConf.select(cfg, "data.source._target_", default="")).endswith("ShardSource"):
        raise ConfigError(
            f"data.repeated_aug={repeats} repeats the images of a map-style data set on other ranks; sharded data "
            "(data=jft) serves each sample once per epoch: set data.repeated_aug=1 (or use data=imagefolder)"
        )
    ema = OmegaConf.select(cfg, "callbacks.ema.decay")
    if ema is not None and is_sharded(OmegaConf.select(cfg, "trainer.strategy")):
        raise ConfigError(
            f"callbacks.ema.decay={ema} averages a whole copy of the model, which FSDP shards: Lightning's weight "
            "averaging does not support sharded models; use hw=ddp (or hw=gpu), or callbacks.ema.decay=null"
        )


def is_sharded(strategy: Any) -> bool:
    """Whether ``trainer.strategy`` (a name or a ``_target_`` node) is FSDP (ours or Lightning's)."""
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    return target.rsplit(".", 1)[-1] in ("FSDPStrategy", "AtomicFSDPStrategy", "fsdp")


def _check_mixup(mixup: Any) -> None:
    if mixup is None:
        return
    if not isinstance(mixup, DictConfig):
        raise ConfigError(f"mixup={shown(mixup)} is not a mapping; write mixup='{{mixup_alpha: 0.8}}' or mixup=null")
    alphas = [mixup.get(k, 0.0) for k in ("mixup_alpha", "cutmix_alpha")]
    if not all(_number(a) and a >= 0 for a in alphas) or not any(alphas):
        raise ConfigError(
            f"mixup.mixup_alpha={shown(alphas[0])} mixup.cutmix_alpha={shown(alphas[1])}: one of them must be > 0 "
            "(and neither < 0); set e.g. mixup.mixup_alpha=0.8, or mixup=null to train without it"
        )
    for key in ("prob", "switch_prob"):
        value = mixup.get(key, 0.5)
        if not (_number(value) and 0 <= value <= 1):
            raise ConfigError(f"mixup.{key}={shown(value)} is not a probability in [0, 1]; set e.g. mixup.{key}=0.5")
