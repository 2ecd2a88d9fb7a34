"""The prepared GPU check (``scripts/device_check.py``) runs end to end as a CPU dry run, so that it cannot rot
before a GPU is lent: every part runs (the carried wheels installed, pytest, the benchmark, train.py on
synthetic JPEGs with host and device decoding, the checkpoint writers) and the JSON and the Markdown table are written."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest

from vit_exp import device_check
from vit_exp.errors import ConfigError


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, standing in for the ones scripts/prepare_device.sh downloads."""
    folder.mkdir()
    path = folder / "vit_exp_probe-0.1-py3-none-any.whl"
    info = "vit_exp_probe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vit_exp_probe.py", "OK = True\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: vit_exp_probe\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return folder


def test_dry_run_runs_every_part_and_writes_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_check, "SITE", tmp_path / "site")
    out = tmp_path / "out"
    device_check.main(["--dry-run", "--out", str(out), "--tmp", str(tmp_path / "work"),
                       "--wheels", str(_wheel(tmp_path / "wheels"))])  # fmt: skip
    report = json.loads((out / "device_check.json").read_text())
    parts = {p["name"]: p for p in report["parts"]}
    assert report["dry_run"] and next(iter(parts)) == "install"
    assert (tmp_path / "site" / "vit_exp_probe.py").is_file()
    assert all(p["status"] == "ok" for name, p in parts.items() if "decode=device" not in name), parts
    bench = parts["bench vit_tiny_patch16_224"]["data"]
    assert bench["arch"] == "vit_tiny_patch16_32" and bench["results"][0]["train_ips"] > 0
    host = parts["train.py data.decode=host"]["data"]
    assert host["steps"] == 4 and host["images_per_s"] > 0 and host["images_per_s_steady"] > 0
    assert 0 < host["input_wait_share"] < 1 and "device_gap_share" not in host  # no CUDA events on a CPU
    writers = {w["writer"]: w for w in parts["checkpoint writers"]["data"]["writers"]}
    assert set(writers) == {"none", "sync", "background"} and writers["sync"]["held_ms_per_save"] > 0
    # device decoding: measured where this checkout has it, reported as skipped (not failed) where not
    assert parts["train.py data.decode=device"]["status"] in ("ok", "skipped")
    table = (out / "device_check.md").read_text()
    assert "| train.py data.decode=host | host | ok |" in table and "input_wait_share" in table


def test_parts_runs_only_those_and_names_the_ones_to_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(device_check, "SITE", tmp_path / "site")
    monkeypatch.setattr(device_check, "run_checkpoint", lambda sizes, tmp: device_check.Part("writers", "failed"))
    out = tmp_path / "out"
    device_check.main(["--dry-run", "--parts", "checkpoint,host", "--out", str(out), "--tmp", str(tmp_path / "w"),
                       "--wheels", str(_wheel(tmp_path / "wheels"))])  # fmt: skip
    keys = [p["key"] for p in json.loads((out / "device_check.json").read_text())["parts"]]
    assert keys == ["install", "jpegs", "host", "checkpoint"]  # the order of a whole check; host needs the JPEGs
    assert capsys.readouterr().out.endswith("python3 scripts/device_check.py --parts checkpoint\n")


def test_parts_refuses_a_part_that_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        device_check.main(["--dry-run", "--parts", "device,bench9"])
    assert e.value.code == 2 and "--parts device,bench9: no part bench9; choose from bench0," in capsys.readouterr().err


def test_a_module_the_parts_need_and_this_machine_lacks_is_named_by_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare image without a package the parts import fails the install with its name, once, instead of every
    part failing with a ModuleNotFoundError in the tail of its output."""
    monkeypatch.setattr(device_check, "SITE", tmp_path / "site")
    monkeypatch.setattr(device_check, "NEEDED", ("vit_exp_probe", "rich", "vit_exp_not_here"))
    part = device_check.install(_wheel(tmp_path / "wheels"), device_check.DRY)  # the probe comes from its wheel
    assert part.status == "failed"
    assert part.detail.startswith("not importable here: vit_exp_not_here; add them to scripts/prepare_device.sh")


def test_only_wheels_for_this_python_are_installed() -> None:
    major, minor = sys.version_info[:2]
    ours, other = f"cp{major}{minor}", f"cp{major}{minor + 1}"
    assert device_check._for_this_python(Path(f"torchcodec-0.17.0-{ours}-{ours}-manylinux_2_28_x86_64.whl"))
    assert not device_check._for_this_python(Path(f"torchcodec-0.17.0-{other}-{other}-manylinux_2_28_x86_64.whl"))
    assert device_check._for_this_python(Path("braceexpand-0.1.7-py2.py3-none-any.whl"))


def test_a_failing_part_is_recorded_and_the_check_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    part = device_check.Part("broken")
    device_check._run(part, ["python3", "-c", "import sys; print('boom'); sys.exit(3)"], box=30)
    assert part.status == "failed" and part.detail == "exit 3: boom"
    slow = device_check.Part("slow")
    device_check._run(slow, ["python3", "-c", "import time; time.sleep(30)"], box=1)
    assert slow.status == "skipped"  # less than MIN_BOX seconds: not started


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm: loader workers share memory otherwise")
@pytest.mark.parametrize("mib", [64, 1024, 1 << 20])
def test_the_train_parts_take_the_workers_that_shared_memory_holds(mib: int, monkeypatch, tmp_path: Path) -> None:
    """A container's /dev/shm (64 MB by default) cannot hold the batches of B/16's 15 workers: the check asks for as
    many as fit, which train.py's own check (``check_shared_memory``) lets through, and no more."""
    from vit_exp.checks import check_shared_memory

    size = mib * 2**20
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(size, 0, size))
    seen: list[str] = []
    monkeypatch.setattr(device_check, "_run", lambda part, command, box, **kw: seen.extend(command) or "")
    part = device_check.run_train("host", tmp_path, device_check.REAL, tmp_path)
    workers = part.data["workers"]
    assert workers == {64: 0, 1024: 13, 1 << 20: 15}[mib]
    if workers == 0:  # not one worker: decoding in the training process would only run out of the part's time
        assert part.status == "skipped" and "/dev/shm cannot hold one loader worker's batches" in part.detail
        assert not seen
    else:
        assert part.status == "ok" and f"data.num_workers={workers}" in seen
    check_shared_memory(workers, 256, 224)
    if workers < 15:
        with pytest.raises(ConfigError):
            check_shared_memory(workers + 1, 256, 224)
