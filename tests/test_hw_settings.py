"""The process-wide settings of a hardware profile (``vit_exp.hw``): the OpenMP wait policy reaches OpenMP (it is
set before torch loads it), threads follow ``hw.threads``, TF32 on CUDA; bad values are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, compose
from vit_exp import hw
from vit_exp.errors import ConfigError


def _spin_count(stderr: str) -> str:
    """libgomp's spin count as it reports it at start-up (OMP_DISPLAY_ENV=VERBOSE): '0' when threads sleep."""
    return next(line.split("=")[1].strip(" '") for line in stderr.splitlines() if "GOMP_SPINCOUNT" in line)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return {**env, "OMP_DISPLAY_ENV": "VERBOSE", **extra}


@pytest.fixture
def busy_neighbour() -> Iterator[subprocess.Popen[bytes]]:
    """Another process keeping one CPU busy for the test's duration."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # running before the test looks
        yield spin
    finally:
        spin.kill()
        spin.wait()


def test_train_cli_puts_openmp_threads_to_sleep_beside_a_busy_process(
    tmp_path: Path, busy_neighbour: subprocess.Popen[bytes]
) -> None:
    """The default profile (hw=cpu, ``hw.omp_wait_policy: auto``) sees the busy CPU and the choice reaches OpenMP:
    the run below stops at its batch check, after torch loaded (and the data with it), before any training."""
    done = subprocess.run([sys.executable, "train.py", "data.batch_size=100000", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert "< data.batch_size=100000: no full training batch" in done.stderr
    assert "OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)" in done.stdout + done.stderr
    assert _spin_count(done.stderr) == "0"


@pytest.mark.parametrize(("hw_node", "user", "spins"), [
    ({"omp_wait_policy": "passive"}, None, "0"),
    ({"omp_wait_policy": "passive"}, "ACTIVE", "30000000000"),  # the user's export wins
    ({"omp_wait_policy": "auto"}, "ACTIVE", "30000000000"),
    ({}, None, "300000"),  # no setting: OpenMP's own default (spin, then sleep)
])  # fmt: skip
def test_wait_policy_is_set_unless_the_user_chose(hw_node: dict, user: str | None, spins: str) -> None:
    code = f"from vit_exp.hw import set_wait_policy; set_wait_policy({hw_node!r}); import torch"
    env = _env(**({"OMP_WAIT_POLICY": user} if user else {}))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert _spin_count(done.stderr) == spins


@pytest.mark.parametrize(("others", "spins"), [(0.0, "300000"), (0.4, "300000"), (1.0, "0")])
def test_auto_wait_policy_follows_the_load_it_saw(others: float, spins: str) -> None:
    """What ``auto`` saw (other processes' busy CPUs, here given) decides what OpenMP gets, all CPUs being torch's."""
    code = (f"import vit_exp.hw as hw; hw._sample_load = lambda: {others}; "
            "assert hw.set_wait_policy({'omp_wait_policy': 'auto'}) == " + repr(None if spins != "0" else "PASSIVE")
            + "; import torch")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _spin_count(done.stderr) == spins


def test_auto_wait_policy_leaves_the_threads_their_free_cpus() -> None:
    assert hw.auto_wait_policy(others=0.0, cpus=2, threads=2) is None
    assert hw.auto_wait_policy(others=1.0, cpus=2, threads=2) == "PASSIVE"
    assert hw.auto_wait_policy(others=1.0, cpus=2, threads=1) is None  # hw.threads=1 leaves one CPU to the others
    assert hw.auto_wait_policy(others=1.6, cpus=2, threads=1) == "PASSIVE"


def test_cpu_times_read_the_cpus_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"  # the machine's total: not a CPU of ours
                    "cpu0 100 1 20 500 7 2 3 40 0 0\n"  # user nice system idle iowait irq softirq steal ...
                    "cpu1 1000 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n")  # fmt: skip
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    now = hw.cpu_times(stat)
    assert now is not None and now.busy == pytest.approx((100 + 1 + 20 + 2 + 3) / os.sysconf("SC_CLK_TCK"))
    assert hw.cpu_times(tmp_path / "missing") is None
    start, end = hw.CpuTimes(wall=0.0, busy=5.0, own=1.0), hw.CpuTimes(wall=0.5, busy=5.75, own=1.25)
    assert hw.other_cpus(start, end) == pytest.approx(1.0)  # 0.75 CPU-s in 0.5 s, 0.25 of them ours


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat (Linux)")
def test_other_cpus_sees_a_busy_process_and_not_this_one(busy_neighbour: subprocess.Popen[bytes]) -> None:
    def neighbour_cpu_s() -> float:  # its user + system time, from its own /proc entry
        fields = Path(f"/proc/{busy_neighbour.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    start, neighbour_start = hw.cpu_times(), neighbour_cpu_s()
    while time.monotonic() < start.wall + 1.0:  # this process busy too: its own time is not the others'
        pass
    end, neighbour = hw.cpu_times(), (neighbour_cpu_s() - neighbour_start) / (time.monotonic() - start.wall)
    ours = (end.own - start.own) / (end.wall - start.wall)
    # What the two spinners got depends on the hypervisor (a VM's stolen time counts as no one's): the others' share
    # is held to the neighbour's own count rather than to a whole CPU, and must leave out this process's.
    assert neighbour > 0.3 and ours > 0.3, (neighbour, ours)
    assert 0.8 * neighbour < hw.other_cpus(start, end) < neighbour + 0.5 * ours, (neighbour, ours)


def test_wait_policy_too_late_warns() -> None:
    # torch is loaded in this process: the policy can no longer change
    saved = os.environ.pop("OMP_WAIT_POLICY", None)
    try:
        with pytest.warns(UserWarning, match="too late: torch .* is already loaded"):
            assert hw.set_wait_policy({"omp_wait_policy": "passive"}) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto left the choice open: nothing to warn about
            assert hw.set_wait_policy({"omp_wait_policy": "auto"}) is None
        assert "OMP_WAIT_POLICY" not in os.environ
    finally:
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved


def test_threads_auto_number_and_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(hw, "_TORCH_DEFAULT", [8])  # torch's choice on an 8-core machine ...
        monkeypatch.setattr(hw, "cpu_quota", lambda: 3)  # ... in a container given 3 CPUs
        monkeypatch.setattr("vit_exp.hw.usable_cpus", lambda: 4)
        assert hw.apply_threads({"threads": "auto"}) == 3 == torch.get_num_threads()
        assert hw.apply_threads({"threads": 1}) == 1 == torch.get_num_threads()
        assert hw.apply_threads(None) == 1  # no setting: left as it is
    finally:
        torch.set_num_threads(before)


def test_default_thread_count_is_torchs_here() -> None:
    """On this machine ``auto`` keeps torch's own count: the default run's float sums stay as they were."""
    assert hw.auto_threads(torch.get_num_threads()) == torch.get_num_threads()


def test_cpu_quota_reads_cgroup_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_text
    for text, want in (("150000 100000\n", 2), ("max 100000\n", None)):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, t=text: t if self.name == "cpu.max" else real(self, *a))
        assert hw.cpu_quota() == want


@pytest.mark.parametrize(("node", "message"), [
    ({"threads": 0}, "hw.threads=0 is not auto or a whole number >= 1; set e.g. hw.threads=2"),
    ({"threads": "many"}, "hw.threads=many is not auto"),
    ({"omp_wait_policy": "sleepy"}, "hw.omp_wait_policy=sleepy is not one of auto, passive, active"),
    ({"matmul_precision": "low"}, "hw.matmul_precision=low is not one of highest, high, medium"),
])  # fmt: skip
def test_bad_values_are_one_line_errors(node: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hw.set_wait_policy(node)


def test_tf32_on_cuda_only() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        assert hw.apply_matmul_precision({}, "cpu") is None and torch.get_float32_matmul_precision() == before
        assert hw.apply_matmul_precision({}, "gpu") == "high" == torch.get_float32_matmul_precision()
        assert hw.apply_matmul_precision({"matmul_precision": "highest"}, "gpu") == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_profiles_carry_the_settings(tmp_path: Path) -> None:
    cpu = compose("train", [], tmp_path)
    assert (cpu.hw.threads, cpu.hw.omp_wait_policy, cpu.trainer.accelerator) == ("auto", "auto", "cpu")
    gpu = compose("train", ["hw=gpu", "hw.matmul_precision=medium"], tmp_path)
    assert (gpu.hw.matmul_precision, gpu.trainer.precision) == ("medium", "bf16-mixed")
    assert compose("train", ["trainer=cpu", "hw.threads=1"], tmp_path).hw.threads == 1


# --- the garbage collector: paused while a command starts, start-up's objects frozen before the first step ----------


def test_a_command_trains_with_the_collector_on_and_start_up_frozen(tmp_path: Path) -> None:
    state = tmp_path / "gc.json"
    done = subprocess.run(
        [sys.executable, "train.py", "model=vit_test", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
         "++trainer.limit_val_batches=1", "++trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}",
         "+callbacks.gc_state._target_=tests.scale.helpers.GcState", f"+callbacks.gc_state.path={state}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(state.read_text())
    assert seen["enabled"] and seen["frozen"] > 100_000  # torch's, Lightning's and the model's objects


def test_resume_gc_freezes_nothing_the_command_did_not_pause() -> None:
    """In a test or a user's script (no ``pause_gc``), the collector is left as it was: nothing of theirs frozen."""
    code = (
        "import gc, vit_exp.hw as hw\n"
        "junk = [[i] for i in range(1000)]\n"
        "hw.resume_gc(); assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "hw.pause_gc(); assert not gc.isenabled()\n"
        "hw.resume_gc(); assert gc.isenabled() and gc.get_freeze_count() >= 1000\n"
        "gc.disable(); hw.pause_gc(); hw.resume_gc(); assert not gc.isenabled()  # the user's own choice stays\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
