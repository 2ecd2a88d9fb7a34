"""The README's XLA table: ``train.py trainer=tpu`` on torch_xla's CPU device beside ``hw=cpu``, one epoch of 19 steps.

    python scripts/xla_bench.py --xla-python .venv-xla/bin/python [--cpu-python python] [--models vit_test vit_micro]

Per model: the graphs compiled before step 1, after step 2, after the validation and after the test (torch_xla's
``CompileTime`` count, from ``XLAMetricsLog``), the first step's time and the median of the later steps on XLA, and the
median step time of the same run on ``hw=cpu`` (the same callback without torch_xla: ``counters=false``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ["debug=limit", "trainer.max_epochs=1", "++trainer.limit_train_batches=50", "++trainer.limit_val_batches=2",
       "++trainer.limit_test_batches=2"]  # fmt: skip


def _run(python: str, script: str, overrides: list[str], env: dict[str, str]) -> None:
    out = subprocess.run([python, str(ROOT / script), *RUN, *overrides], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, check=False)  # fmt: skip
    if out.returncode:
        sys.exit(f"error: {script} {' '.join(overrides)} failed:\n{out.stderr[-2000:]}")


def _times(path: Path) -> tuple[list[dict], dict[int, float]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return records, {r["step"]: r["s"] for r in records if r["stage"] == "train"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xla-python", required=True, help="python of the torch_xla environment (scripts/xla_env.sh)")
    parser.add_argument("--cpu-python", default=sys.executable)
    parser.add_argument("--models", nargs="+", default=["vit_test", "vit_micro"])
    args = parser.parse_args()
    rows = ["| model | XLA CPU: graphs compiled (before step 1 / after step 2 / after the validation / after the test) "
            "| XLA CPU: first step, then per step (median) | `hw=cpu`: per step (median) |", "|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            paths = {kind: Path(tmp) / f"{model}_{kind}" for kind in ("xla", "cpu")}
            for kind, path in paths.items():
                log = f"+callbacks.xla_metrics={{_target_:vit_exp.callbacks.xla.XLAMetricsLog,path:{path}/steps.jsonl}}"
                if kind == "xla":
                    _run(args.xla_python, "tests/xla/cpu_train.py", ["trainer=tpu", "trainer.devices=1",
                         f"model={model}", f"hydra.run.dir={path}", log], {"PJRT_DEVICE": "CPU"})  # fmt: skip
                else:
                    clock = log[:-1] + ",counters:false}"
                    _run(args.cpu_python, "train.py", ["hw=cpu", f"model={model}", f"hydra.run.dir={path}", clock], {})
            records, xla = _times(paths["xla"] / "steps.jsonl")
            _, cpu = _times(paths["cpu"] / "steps.jsonl")
            train = [r for r in records if r["stage"] == "train"]
            vals = [r["CompileTime"] for r in records if r["stage"] == "val"]
            counts = (train[0]["CompileTime"], next(r["CompileTime"] for r in train if r["step"] == 2), vals[-1],
                      records[-1]["CompileTime"])  # fmt: skip
            later = lambda t: statistics.median(t[s] - t[s - 1] for s in t if s >= 3 and s - 1 in t)  # noqa: E731
            rows.append(f"| `{model}` | {' / '.join(map(str, counts))} | {xla[1] - xla[0]:.1f} s, then "
                        f"{1000 * later(xla):.0f} ms | {1000 * later(cpu):.0f} ms |")  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main()
