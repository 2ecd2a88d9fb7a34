"""The benchmark command runs and reports both implementations side by side (figures are not asserted: speed is
measured by running it, not by tests)."""

from __future__ import annotations

import pytest

from vit_exp.bench import Result, main, report

TINY_RUN = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--iters", "1",
            "--rounds", "1", "--warmup", "1"]  # fmt: skip


def test_bench_times_ours_and_timm_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    results = main(TINY_RUN)
    assert [r.impl.split()[0] for r in results] == ["vit_exp", "timm"]
    assert all(r.train_ips > 0 and r.infer_ips > 0 for r in results)
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224 @ 32, batch 2, fp32" in out and "train vs timm eager" in out


def test_report_gives_speeds_relative_to_timm_eager() -> None:
    results = [
        Result("vit_exp", 230.0, 700.0, None, None),
        Result("timm 1.0", 200.0, 700.0, None, None),
        Result("vit_exp compiled", 300.0, 1400.0, None, None),
        Result("timm 1.0 compiled", 250.0, 1050.0, None, None),
    ]
    rows = {line.split("  ")[0].strip(): line for line in report(results).splitlines()[1:]}
    assert rows["vit_exp"].endswith("1.150x               1.000x")
    assert rows["vit_exp compiled"].endswith("1.500x               2.000x")
    assert "train vs timm eager" not in report(results[:1])  # no reference, no ratio
