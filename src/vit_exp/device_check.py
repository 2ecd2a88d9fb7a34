"""Every GPU measurement of issue 13 in one call of at most 8 minutes: ``python scripts/device_check.py``.

For a machine lent for minutes, on a bare image (one H200; torch, Lightning, timm; no Hydra, no network). Each part
runs in its own process with its own time box, a failure is recorded and the next part runs; they run in the order
of ``Sizes.boxes`` (install, the B/16 benchmarks, train.py, pytest, the checkpoint writers, the compiled step, the
larger models), within a 480 s budget:

1. install the wheels that ``scripts/prepare_device.sh`` put in ``wheels/`` (Hydra, omegaconf, webdataset, ...;
   vit_exp itself runs from the checkout's ``src``);
2. ``pytest -m gpu``;
3. ``python -m vit_exp.bench``: ViT-B/16 @ 224 (eager, then eager and compiled, ours and timm's, train and
   inference, MFU, peak memory; then ours with the loss and AdamW step compiled too, ``--compile-step``),
   ViT-B/16 @ 384 and ViT-L/16 @ 224;
4. ``python -m vit_exp.bench_checkpoint``: a ~1 GB checkpoint (B/16 and AdamW's state) every 10 steps, written
   synchronously, in the background and not at all;
5. ``train.py`` on synthetic JPEGs written to local disk, ``hw=gpu compile=true``, host decoding and device
   decoding (``data.decode=device``; skipped where this checkout has no such key), a few hundred steps: images/s
   end to end (``results.json``), over the whole fit and after its first steps (the compile), and the share of
   that time spent between steps: by the host, waiting for the next batch, and by the GPU (CUDA events;
   ``vit_exp.callbacks.Throughput``).

Writes ``device_check.json`` and ``device_check.md`` to ``$OUT`` (or ``--out``) and, where a part did not pass,
the command that runs only those again (``--parts device,bench4``: the install always runs, the JPEGs with the
train.py parts), to fit a second try in what is left of the device time. ``--dry-run``: the same parts at tiny
sizes on the CPU (vit_test, 32 px, a few steps), which a test runs. The sizes, time boxes and needed modules are
``vit_exp.device_plan``'s. Only the standard library is imported here (and ``vit_exp.hw`` and
``vit_exp.device_plan``, which import nothing else): the parts run in child processes, after the install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vit_exp.device_plan import DRY, NEEDED, REAL, Sizes
from vit_exp.hw import shm_workers

ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/vit_exp/device_check.py
SITE = Path(os.environ.get("VIT_EXP_SITE", "/tmp/vit_exp_site"))  # where the carried wheels go (pip --target)


@dataclass
class Part:
    """One part's outcome: ok, failed (its error, the end of its output) or skipped (why)."""

    name: str
    status: str = "ok"
    key: str = ""  # its name for --parts (a key of Sizes.boxes)
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the checkout first: its vit_exp (and configs) is what runs, whatever else the carried wheels or the image hold
    paths = [str(ROOT / "src"), *([str(SITE)] if SITE.is_dir() else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths).strip(os.pathsep)
    return env


class Clock:
    """The check's time budget: each part gets its own box, cut to what is left of the whole."""

    def __init__(self, budget: float) -> None:
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def box(self, wanted: int) -> int:
        return int(min(wanted, self.budget - self.elapsed()))


CLOCK = Clock(480.0)
MIN_BOX = 10  # seconds: a part with less than this left is skipped, not started


def _run(part: Part, command: list[str], box: int, cwd: Path = ROOT, ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run ``command`` within ``box`` seconds (and what is left of the budget); a non-zero exit or the time running
    out marks ``part`` failed, and too little time left skips it."""
    box = CLOCK.box(box)
    if box < MIN_BOX:
        part.status, part.detail = "skipped", "no time left in the budget"
        return ""
    t0 = time.perf_counter()
    try:
        # one stream: a part that runs out of time keeps its traceback and Lightning's log (stderr) with the rest
        done = subprocess.run(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=box, check=False)  # fmt: skip
        out = done.stdout
        if done.returncode not in ok_codes:
            part.status, part.detail = "failed", f"exit {done.returncode}: {_tail(out)}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        part.status, part.detail = "failed", f"ran past its {box} s: {_tail(out)}"
    part.seconds = round(part.seconds + time.perf_counter() - t0, 1)
    return out


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])[-1500:]


def install(wheels: Path, sizes: Sizes) -> Part:
    """``pip install --no-index --no-deps --target`` of every carried wheel (the image's own packages stay)."""
    part = Part("install")
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        part.status, part.detail = "skipped", f"no wheels in {wheels} (run scripts/prepare_device.sh first)"
        return part
    other = [w for w in found if not _for_this_python(w)]  # e.g. a dry run on 3.11 of the device's cp312 wheels
    found = [w for w in found if w not in other]
    _run(part, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, found)], sizes.boxes["install"])  # fmt: skip
    part.data["wheels"] = [w.name for w in found]
    if other:
        part.data["not_for_this_python"] = [w.name for w in other]
    if part.status == "ok" and (missing := _missing(sizes)):  # named here, not as a traceback in each part's tail
        part.status = "failed"
        part.detail = f"not importable here: {', '.join(missing)}; add them to scripts/prepare_device.sh's wheels"
    return part


def _missing(sizes: Sizes) -> list[str]:
    """The modules of ``NEEDED`` that the parts' interpreter (this one, with their PYTHONPATH) cannot find."""
    probe = Part("probe")
    code = f"import importlib.util as u; print(*[m for m in {NEEDED!r} if u.find_spec(m) is None])"
    out = _run(probe, [sys.executable, "-c", code], sizes.boxes["install"])
    return out.split() if probe.status == "ok" else [f"(the probe failed: {probe.detail})"]


def _for_this_python(wheel: Path) -> bool:
    """Whether the wheel's Python tag (``{name}-{version}[-{build}]-{python}-{abi}-{platform}.whl``) admits this
    interpreter: py3, py3N or cp3N."""
    major, minor = sys.version_info[:2]
    python_tags = wheel.name.split("-")[-3].split(".")
    return any(tag in (f"py{major}", f"py{major}{minor}", f"cp{major}{minor}") for tag in python_tags)


def run_pytest(sizes: Sizes, out: Path) -> Part:
    part = Part("pytest -m gpu")
    # exit 5: nothing selected (a dry run's file has no GPU test)
    text = _run(part, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
                       *sizes.pytest], sizes.boxes["pytest"], ok_codes=(0, 5))  # fmt: skip
    (out / "pytest.log").write_text(text)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    summary = re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", last)
    part.data = {k: int(n) for n, k in summary}
    return part


def run_bench(i: int, args: list[str], sizes: Sizes, tmp: Path) -> Part:
    part = Part(f"bench {args[1]}" + "".join(f" {a}" for a in ("--compile", "--compile-step") if a in args))
    path = tmp / f"bench{i}.json"
    _run(part, [sys.executable, "-m", "vit_exp.bench", *args, "--json", str(path)], sizes.boxes[f"bench{i}"])
    if path.is_file():
        part.data = json.loads(path.read_text())
    return part


def run_checkpoint(sizes: Sizes, tmp: Path) -> Part:
    """``python -m vit_exp.bench_checkpoint``: the synchronous and the background checkpoint writer, and none."""
    part = Part("checkpoint writers")
    path = tmp / "checkpoint.json"
    command = [sys.executable, "-m", "vit_exp.bench_checkpoint", *sizes.checkpoint, "--dir", str(tmp)]
    _run(part, [*command, "--json", str(path)], sizes.boxes["checkpoint"])
    if path.is_file():
        part.data = json.loads(path.read_text())
    return part


def write_jpegs(root: Path, sizes: Sizes) -> Part:
    """``root/{train,val}/<class>/*.jpg``: random images (noise does not compress: a worst case for decoding)."""
    part = Part("synthetic jpegs")
    code = (
        "import sys, numpy as np; from PIL import Image; from pathlib import Path; from concurrent.futures import "
        "ProcessPoolExecutor as P\n"
        "root, n, side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
        "def one(i):\n"
        "    d = root / ('val' if i % 10 == 0 else 'train') / f'c{i % 4}'; d.mkdir(parents=True, exist_ok=True)\n"
        "    rng = np.random.default_rng(i); small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)\n"
        "    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(d / f'{i}.jpg', quality=90)\n"
        "if __name__ == '__main__':\n"
        "    with P() as p: list(p.map(one, range(n), chunksize=64))\n"
    )
    _run(part, [sys.executable, "-c", code, str(root), str(sizes.images), str(sizes.image_side)], sizes.boxes["jpegs"])
    part.data = {"images": sizes.images, "side": sizes.image_side}
    return part


# results.json's figures of a train.py part (vit_exp.callbacks.Throughput): the whole fit's images/s, then after its
# first steps (the compile): images/s, the host's share of the time waiting for batches, the GPU's outside the steps
TRAIN_FIGURES = ("images_per_s", "images_per_s_steady", "input_wait_share", "device_gap_share", "steps")


def run_train(decode: str, data: Path, sizes: Sizes, tmp: Path) -> Part:
    """``train.py`` on the JPEGs with host or device decoding for ``sizes.steps`` steps; its img/s and wait share."""
    part = Part(f"train.py data.decode={decode}")
    run_dir = tmp / f"train_{decode}"
    # what a worker hands over for each image: the decoded crop, or the file's bytes (device decoding)
    files = [f.stat().st_size for f in (data / "train").rglob("*.jpg")] if decode == "device" else []
    image_bytes = sum(files) // max(len(files), 1) if files else 3 * sizes.img_size**2
    # a container's /dev/shm (64 MB by default) cannot hold the batches of B/16's 15 workers (~1.2 GB): as many as
    # it holds, by train.py's own count (vit_exp.checks.check_shared_memory), which would stop the part at once
    fits = shm_workers(sizes.batch * image_bytes)
    workers = sizes.workers if fits is None else min(sizes.workers, fits)
    part.data["workers"] = workers
    if workers == 0 < sizes.workers:  # decoding in the training process would only run out of the part's time
        part.status = "skipped"
        part.detail = f"/dev/shm cannot hold one loader worker's batches ({sizes.batch} x {image_bytes:,} bytes)"
        return part
    overrides = [*sizes.hw, *sizes.train_model, f"res={sizes.img_size}", "data=imagefolder", f"data.root={data}",
                 "data.num_classes=4", f"data.decode={decode}", f"data.batch_size={sizes.batch}",
                 f"data.eval_batch_size={sizes.batch}", f"data.num_workers={workers}",
                 f"trainer.max_steps={sizes.steps}", "trainer.max_epochs=-1", "++trainer.limit_val_batches=2",
                 "++trainer.limit_test_batches=2", "++trainer.enable_progress_bar=false", "callbacks.plots=null",
                 # no checkpoint (the checkpoint part measures those): a B/16's with AdamW's state is ~1 GB, fsynced
                 # at every one of the ~14 epochs' ends it would cost the part's box tens of seconds
                 "callbacks.best_checkpoint=null", "++callbacks.last_checkpoint.every_n_epochs=1000",
                 f"hydra.run.dir={run_dir}"]  # fmt: skip
    train = [sys.executable, str(ROOT / "train.py")]
    try:
        shown = subprocess.run([*train, *overrides, "--cfg", "job"], cwd=ROOT, env=_env(), capture_output=True,
                               text=True, timeout=max(CLOCK.box(60), 1), check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        part.status, part.detail = "failed", "composing the config (train.py --cfg job) ran past its time"
        return part
    if shown.returncode != 0:
        if decode != "host" and "decode" in shown.stdout + shown.stderr:
            part.status, part.detail = "skipped", f"this checkout has no data.decode={decode}: {_tail(shown.stderr, 1)}"
        else:
            part.status, part.detail = "failed", f"the config does not compose: {_tail(shown.stdout + shown.stderr)}"
        return part
    _run(part, [*train, *overrides], sizes.boxes[decode])
    results = run_dir / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        part.data.update({k: r[k] for k in TRAIN_FIGURES if r.get(k) is not None})
    log = run_dir / "cli.log"
    decoder = re.search(r"\(JPEGs by (\w+);", log.read_text()) if log.is_file() else None
    if decoder:  # device decoding: TorchCodec's, or torchvision's where TorchCodec cannot run
        part.data["decoder"] = decoder.group(1)
    return part


def markdown(parts: list[Part], header: str) -> str:
    """One table: each part, its status and time, and its main figures."""
    lines = [f"# device check: {header}", "", "| part | key | status | s | figures |", "|---|---|---|---|---|"]
    for p in parts:
        figures = p.detail if p.status != "ok" else _figures(p)
        lines.append(f"| {p.name} | {p.key} | {p.status} | {p.seconds:.0f} | {figures.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def _figures(p: Part) -> str:
    if "results" in p.data:  # a benchmark
        rows = []
        for r in p.data["results"]:
            mfu = f", MFU {100 * r['train_mfu']:.1f}%" if r.get("train_mfu") else ""
            mem = f", {r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") else ""
            rows.append(f"{r['impl']}: train {r['train_ips']:.0f} img/s, infer {r['infer_ips']:.0f} img/s{mfu}{mem}")
        return f"{p.data.get('arch')} b{p.data.get('batch_size')}: " + "; ".join(rows)
    if "writers" in p.data:  # the checkpoint writers
        rows = [f"{w['writer']}: {w['round_s']:.2f} s, held {w['held_ms_per_save']:.0f} ms/save, cost "
                f"{w['cost_ms_per_save']:.0f} ms/save" for w in p.data["writers"]]  # fmt: skip
        return f"{p.data['saves']} saves of {p.data['checkpoint_mb']:.0f} MB: " + "; ".join(rows)
    return ", ".join(f"{k} {v}" for k, v in p.data.items() if not isinstance(v, list))


def main(argv: list[str] | None = None) -> list[Part]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the same code path, in seconds")
    p.add_argument("--out", default=os.environ.get("OUT", "device_check_out"), help="where the JSON and table go")
    p.add_argument("--wheels", default=str(ROOT / "wheels"), help="the wheels scripts/prepare_device.sh made")
    p.add_argument("--tmp", default="/tmp/vit_exp_device_check", help="local disk for the JPEGs and the runs")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check (parts past it: skipped)")
    p.add_argument("--parts", help="only these parts, comma-separated (the report's keys, e.g. device,bench4); the "
                   "install always runs, the JPEGs with host or device")  # fmt: skip
    args = p.parse_args(argv)
    CLOCK.start, CLOCK.budget = time.perf_counter(), args.budget
    sizes = DRY if args.dry_run else REAL
    keys = list(sizes.boxes)
    if args.parts:
        wanted = {k.strip() for k in args.parts.split(",") if k.strip()}
        if unknown := sorted(wanted - set(keys)):
            p.error(f"--parts {args.parts}: no part {', '.join(unknown)}; choose from {','.join(keys[1:])}")
        wanted |= {"install"} | ({"jpegs"} if wanted & {"host", "device"} else set())
        keys = [k for k in keys if k in wanted]
    out, tmp = Path(args.out), Path(args.tmp)
    out.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    start = CLOCK.start
    parts: list[Part] = []
    report: dict[str, Any] = {"dry_run": args.dry_run, "python": platform.python_version(), "cpus": os.cpu_count()}
    if Path("/dev/shm").is_dir():  # where loader workers hand over their batches: a small one fails the host part
        report["shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 2)
    report["parts"] = []
    makers = {
        "install": lambda: install(Path(args.wheels), sizes),
        "bench0": lambda: run_bench(0, sizes.benches[0], sizes, tmp),
        "jpegs": lambda: write_jpegs(tmp / "jpegs", sizes),
        "host": lambda: run_train("host", tmp / "jpegs", sizes, tmp),
        "device": lambda: run_train("device", tmp / "jpegs", sizes, tmp),
        "pytest": lambda: run_pytest(sizes, out),
        "checkpoint": lambda: run_checkpoint(sizes, tmp),
        **{f"bench{i}": lambda i=i, a=a: run_bench(i, a, sizes, tmp) for i, a in enumerate(sizes.benches) if i},
    }
    for key in keys:
        part = makers[key]()
        part.key = key
        parts.append(part)
        report["parts"] = [asdict(x) for x in parts]
        print(f"[{time.perf_counter() - start:5.0f} s] {part.name}: {part.status} {part.detail}", flush=True)
        report["seconds"] = round(time.perf_counter() - start, 1)
        header = f"{'dry run, CPU' if args.dry_run else 'GPU'}; {report['seconds']:.0f} s; Python {report['python']}"
        # both after every part: a check killed at its time limit keeps what it measured so far
        (out / "device_check.json").write_text(json.dumps(report, indent=1))
        (out / "device_check.md").write_text(markdown(parts, header))
    print(markdown(parts, header))
    if again := [x.key for x in parts if x.status != "ok" and x.key != "install"]:
        print(f"to run what did not pass again: python3 scripts/device_check.py --parts {','.join(again)}")
    return parts


if __name__ == "__main__":
    main()
