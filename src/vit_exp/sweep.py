"""The table of a sweep: every job's settings, status and figures, in the sweep directory.

``SweepSummary`` is a Hydra callback (``hydra.callbacks`` in ``conf/train.yaml``). At the end of each job of a
multirun it writes ``SWEEP_DIR/jobs/N.json`` (the job's overrides, COMPLETED or FAILED with the error, the value
the sweeper optimises, the figures of its ``results.json``) and rewrites ``summary.csv`` and ``summary.md`` from
all of them. Jobs run by other processes (submitit) write their own record, so the table is whole whatever
the launcher; a job killed before its end shows as ``missing``. It imports neither torch nor Lightning.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from vit_exp import compat

log = logging.getLogger(__name__)

RECORDS = "jobs"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
RESULT_KEYS = ("best_val_top1", "top1", "top5", "steps", "wall_time_s")  # from each job's results.json


def job_record(num: int, job_return: JobReturn, output_dir: Path) -> dict[str, Any]:
    """What the table says about job ``num`` of a sweep, which has just ended."""
    failed = job_return.status != JobStatus.COMPLETED
    value = None if failed else compat.job_return_value(job_return)
    record: dict[str, Any] = {
        "job": num,
        "overrides": list(job_return.overrides or []),
        "status": "FAILED" if failed else "COMPLETED",
        "objective": value if isinstance(value, (int, float)) and not isinstance(value, bool) else None,
        "error": _error_line(compat.job_return_value(job_return)) if failed else None,
        "run_dir": str(output_dir),
    }
    results = output_dir / "results.json"
    if results.is_file():
        saved = json.loads(results.read_text())
        record.update({k: saved.get(k) for k in RESULT_KEYS})
    return record


def _error_line(error: BaseException) -> str:
    """One line for the table: the message, or for a multi-line one (a rank's traceback, as submitit reports it)
    its last line, which names the exception that ended the job."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def summary_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job of ``sweep_dir``: its recorded outcome, or ``missing`` for a job that left no record."""
    records = {}
    for path in sorted((sweep_dir / RECORDS).glob("*.json")):
        record = json.loads(path.read_text())
        records[record["job"]] = record
    for job_dir in sweep_dir.iterdir():
        if job_dir.is_dir() and job_dir.name.isdigit() and int(job_dir.name) not in records:
            overrides_file = job_dir / ".hydra" / "overrides.yaml"
            overrides = (
                [line[2:] for line in overrides_file.read_text().splitlines() if line.startswith("- ")]
                if (overrides_file.is_file())
                else []
            )
            records[int(job_dir.name)] = {"job": int(job_dir.name), "overrides": overrides, "status": "missing"}
    return [records[k] for k in sorted(records)]


def _table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, cells): the override keys whose values differ between jobs, then status and figures."""
    settings = [dict(_split(o) for o in row.get("overrides", [])) for row in rows]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1] or keys
    figures = ["status", "objective", *RESULT_KEYS, "error"]
    header = ["job", *varying, *figures]
    cells = [
        [row["job"], *(s.get(k, "") for k in varying), *(row.get(f) for f in figures)] for row, s in zip(rows, settings)
    ]
    return header, cells


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def write_summary(sweep_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` in ``sweep_dir`` from the job records; return their paths."""
    header, cells = _table(summary_rows(sweep_dir))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([[_fmt(c) for c in row] for row in cells])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells]
    paths = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    for path, text in zip(paths, (out.getvalue(), "\n".join(md) + "\n")):
        _write_atomically(path, text)  # jobs of a parallel launcher finish at the same time
    return paths


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SweepSummary(Callback):
    """Record each job of a multirun and keep the sweep's summary table up to date (nothing for single runs)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hc = config.hydra
        if hc.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(hc.sweep.dir)
        record = job_record(hc.job.num, job_return, Path(hc.runtime.output_dir))
        (sweep_dir / RECORDS).mkdir(parents=True, exist_ok=True)
        _write_atomically(sweep_dir / RECORDS / f"{record['job']}.json", json.dumps(record, indent=2) + "\n")
        write_summary(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if (sweep_dir / RECORDS).is_dir():
            log.info("sweep summary: %s", write_summary(sweep_dir)[1])
