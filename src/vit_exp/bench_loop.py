"""The training loop's overhead: our Lightning stack against a bare PyTorch loop doing the same work.

    python -m vit_exp.bench --loop                          # the default run's job (digits, vit_micro, batch 64): ~5 min
    python -m vit_exp.bench_loop --rounds 3 --e2e-rounds 1  # fewer repeats (noisier)
    python -m vit_exp.bench_loop model=vit_test             # any train.py overrides

Per step: in this process, ``train.py``'s trainer (every default callback, logger and check) fits the model for
``--epochs`` epochs, and a bare loop does the same work (the same model and seed, AdamW with the same parameter
groups, schedule, label smoothing and clipping, over the same training images, normalised the same way). The two
alternate ``--rounds`` times; a round's figure is the median gap between consecutive optimizer steps (loading
included; epoch ends, validation and checkpoints fall outside the median). End to end: ``python train.py``
against the bare job (the same epochs, a validation each epoch, a test and a checkpoint), each its own process
(start-up included), alternating ``--e2e-rounds`` times. Reported: the medians of the rounds, and as the ratio
the median of the rounds' own ratios.

The goal (issue 13): ours within 5% of the bare loop per step and 10% end to end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


@dataclass
class LoopResult:
    """Each round's figures (``rounds``): per-step milliseconds ``ours_ms``, ``bare_ms`` and end-to-end seconds
    ``ours_s``, ``bare_s`` (empty: not run). Reported: their medians, and as a ratio the median of the rounds' own
    ratios (each round runs ours, then the bare loop), so that a round slowed by something else on the machine
    moves the ratio less than it moves either side's median."""

    rounds: dict[str, list[float]]

    def _median(self, key: str) -> float | None:
        values = self.rounds.get(key)
        return statistics.median(values) if values else None

    def _ratio(self, unit: str) -> float | None:
        ours, bare = self.rounds.get(f"ours_{unit}", []), self.rounds.get(f"bare_{unit}", [])
        return statistics.median(o / b for o, b in zip(ours, bare, strict=True)) if ours else None

    @property
    def ours_ms(self) -> float | None:
        return self._median("ours_ms")

    @property
    def bare_ms(self) -> float | None:
        return self._median("bare_ms")

    @property
    def ours_s(self) -> float | None:
        return self._median("ours_s")

    @property
    def bare_s(self) -> float | None:
        return self._median("bare_s")

    @property
    def step_ratio(self) -> float | None:
        return self._ratio("ms")

    @property
    def e2e_ratio(self) -> float | None:
        return self._ratio("s")


def compose(overrides: list[str], output_dir: str) -> DictConfig:
    """``conf/train.yaml`` with ``overrides``, as ``python train.py`` composes it, writing into ``output_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vit_exp.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def _gaps(times: list[float]) -> float:
    """Median milliseconds between consecutive step ends."""
    return 1000 * statistics.median(b - a for a, b in itertools.pairwise(times))


def ours_step_times(cfg: DictConfig) -> list[float]:
    """Fit ``cfg`` through ``train.py``'s builders; the clock at the end of every training batch."""
    import lightning.pytorch as pl

    from vit_exp.build import batch_plan, build_model, build_module, build_trainer, prepare

    times: list[float] = []

    class StepClock(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter())

    spec, datamodule = prepare(cfg)
    backbone = build_model(spec, cfg.model)
    trainer = build_trainer(cfg, [StepClock()])
    module = build_module(cfg, backbone, datamodule, lr=batch_plan(cfg, trainer).lr)
    trainer.fit(module, datamodule=datamodule)
    return times


class BareJob:
    """The same work as the run of ``cfg``, written as a plain PyTorch loop (no Lightning).

    Only what the default run uses: one device, ``optim=adamw`` (or any ``torch.optim`` partial), the schedule,
    label smoothing, norm clipping, no mixup or EMA.
    """

    def __init__(self, cfg: DictConfig, device: str = "cpu") -> None:
        import torch
        from hydra.utils import instantiate

        from vit_exp.build import plain_schedule
        from vit_exp.checks import resolve_model
        from vit_exp.data.transforms import build_eval_transform, build_train_transform
        from vit_exp.models import create_model
        from vit_exp.optim import param_groups

        self.device = torch.device(device)
        spec = resolve_model(cfg.model)
        pre, data = spec.preprocessing, cfg.data
        source = instantiate(data.source)
        crop_pct, interp = data.crop_pct or pre.crop_pct, data.interpolation or pre.interpolation
        self.mean, self.std = tuple(data.mean or pre.mean), tuple(data.std or pre.std)
        eval_tf = build_eval_transform(int(data.img_size), crop_pct, interp)
        aug = OmegaConf.to_container(data.train_aug) if data.train_aug else {}
        aug = {k: v for k, v in aug.items() if k != "random_erasing"}
        train_tf = build_train_transform(int(data.img_size), interp, **aug) if aug else eval_tf
        self.train_set = source.dataset("train", train_tf)
        self.eval_sets = {s: source.dataset(s, eval_tf) for s in ("val", str(data.test_split))}
        self.batch_size, self.eval_batch_size = int(data.batch_size), int(data.eval_batch_size)
        torch.manual_seed(int(cfg.seed))
        self.model = create_model(spec).to(self.device)
        optim = OmegaConf.to_container(cfg.optim, resolve=True)
        optim.pop("layer_decay", None)
        self.optimizer = instantiate(optim, _convert_="all")(param_groups(self.model))
        steps_per_epoch = len(self.train_set) // self.batch_size
        self.epochs = int(cfg.trainer.max_epochs)
        schedule = plain_schedule(instantiate(cfg.sched))  # as ours: no Hydra in the step
        total = steps_per_epoch * self.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(s, total_steps=total))
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=float(cfg.loss.label_smoothing))
        self.clip = cfg.trainer.gradient_clip_val

    def _batches(self, dataset: Any, batch_size: int, train: bool) -> Any:
        from torch.utils.data import DataLoader

        from vit_exp.data.transforms import normalize

        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train):
            yield normalize(x.to(self.device), self.mean, self.std), y.to(self.device)

    def train_epoch(self, times: list[float] | None = None) -> None:
        import torch

        self.model.train()
        for x, y in self._batches(self.train_set, self.batch_size, train=True):
            loss = self.criterion(self.model(x), y)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.clip))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            if times is not None:
                times.append(time.perf_counter())

    def evaluate(self, split: str) -> float:
        """Top-1 on ``split``."""
        import torch

        self.model.eval()
        hits = total = 0
        with torch.inference_mode():
            for x, y in self._batches(self.eval_sets[split], self.eval_batch_size, train=False):
                hits += int((self.model(x).argmax(-1) == y).sum())
                total += len(y)
        return hits / total

    def run(self, out_dir: str, test_split: str) -> float:
        """The whole job: train, validate every epoch, keep the best weights (saved), test them."""
        import copy

        import torch

        best, best_state = -1.0, None
        for _ in range(self.epochs):
            self.train_epoch()
            top1 = self.evaluate("val")
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, f"{out_dir}/last.pt")
            if top1 >= best:
                best, best_state = top1, copy.deepcopy(self.model.state_dict())
        self.model.load_state_dict(best_state)
        return self.evaluate(test_split)


def bare_step_times(cfg: DictConfig) -> list[float]:
    job = BareJob(cfg)
    times: list[float] = []
    for _ in range(job.epochs):
        job.train_epoch(times)
    return times


def _e2e(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(
    overrides: list[str], epochs: int, rounds: int, e2e_rounds: int, progress_bar: bool = False
) -> LoopResult:
    """Alternate ours and the bare loop ``rounds`` times per step and ``e2e_rounds`` times end to end; with
    ``progress_bar`` ours draws its progress bar during the per-step rounds (to this process's terminal)."""
    steps: dict[str, list[float]] = {"ours": [], "bare": []}
    walls: dict[str, list[float]] = {"ours": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        # Per step: a short fit without validation or test; per-round medians.
        short = [*overrides, f"trainer.max_epochs={epochs}", "++trainer.limit_val_batches=0",
                 "++trainer.enable_model_summary=false"]  # fmt: skip
        if not progress_bar:
            short.append("++trainer.enable_progress_bar=false")
        for r in range(rounds):
            steps["ours"].append(_gaps(ours_step_times(compose(short, f"{tmp}/ours{r}"))))
            steps["bare"].append(_gaps(bare_step_times(compose(short, f"{tmp}/bare{r}"))))
        for r in range(e2e_rounds):
            walls["ours"].append(_e2e([sys.executable, "-c", "from vit_exp.cli import train; train()", *overrides,
                                       f"hydra.run.dir={tmp}/e2e_ours{r}"]))  # fmt: skip
            walls["bare"].append(_e2e([sys.executable, "-m", "vit_exp.bench_loop", "--bare-job", f"{tmp}/e2e_bare{r}",
                                       *overrides]))  # fmt: skip
    return LoopResult({f"{k}_ms": v for k, v in steps.items()} | {f"{k}_s": v for k, v in walls.items()})


def report(result: LoopResult, label: str) -> str:
    lines = [label, f"{'':<12}{'ours':>10}{'bare':>10}{'ratio':>9}",
             f"{'per step':<12}{result.ours_ms:>8.2f}ms{result.bare_ms:>8.2f}ms{result.step_ratio:>8.3f}x"]  # fmt: skip
    if result.e2e_ratio is not None:
        lines.append(f"{'end to end':<12}{result.ours_s:>9.1f}s{result.bare_s:>9.1f}s{result.e2e_ratio:>8.3f}x")
    lines.append("rounds: " + json.dumps({k: [round(x, 2) for x in v] for k, v in result.rounds.items()}))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> LoopResult | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train.py overrides (default: the default run)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each per-step round")
    p.add_argument("--rounds", type=int, default=9, help="alternating per-step rounds; the median is reported")
    p.add_argument("--e2e-rounds", type=int, default=3, help="alternating end-to-end runs of each; 0: none")
    p.add_argument("--progress-bar", action="store_true", help="per step: ours with its progress bar, drawn to this "
                   "terminal (the per-step figure leaves it out by default)")  # fmt: skip
    p.add_argument("--bare-job", metavar="DIR", help=argparse.SUPPRESS)  # the bare side of an end-to-end round
    args = p.parse_args(argv)
    if args.bare_job:
        from vit_exp.hw import apply_threads, set_wait_policy

        Path(args.bare_job).mkdir(parents=True, exist_ok=True)
        cfg = compose(args.overrides, args.bare_job)
        set_wait_policy(cfg.get("hw"))
        apply_threads(cfg.get("hw"))
        print(f"test top-1 {100 * BareJob(cfg).run(args.bare_job, str(cfg.data.test_split)):.2f}%")
        return None
    from vit_exp.hw import apply_threads, set_wait_policy

    cfg = compose(args.overrides, tempfile.gettempdir())
    if (accelerator := cfg.trainer.get("accelerator")) != "cpu":  # the bare loop (BareJob) runs on the CPU only
        p.error(
            f"trainer.accelerator={accelerator}: the loop benchmark compares our trainer with a bare loop on the CPU; "
            "run it with hw=cpu (the default), and time a GPU's step with python -m vit_exp.bench"
        )
    if "torch" not in sys.modules:  # as train.py does, before torch loads OpenMP (python -m vit_exp.bench_loop)
        set_wait_policy(cfg.get("hw"))
    apply_threads(cfg.get("hw"))
    import torch

    result = measure(args.overrides, args.epochs, args.rounds, args.e2e_rounds, args.progress_bar)
    label = (f"{cfg.model.name} on {cfg.data.name}, batch {cfg.data.batch_size}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}; {args.rounds} rounds of {args.epochs} epochs"
             f"{' (ours with its progress bar)' if args.progress_bar else ''}, {args.e2e_rounds} end to end")  # fmt: skip
    print(report(result, label))
    return result


if __name__ == "__main__":
    main()
