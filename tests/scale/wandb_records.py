"""Read an offline W&B run back from its ``run-ID.wandb`` file, for tests: what a later ``wandb sync`` uploads.

The file is a LevelDB-style log (the format W&B's own ``datastore`` reader used): a 7-byte W&B header, then
32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``, whose data joined make one
``wandb_internal_pb2.Record`` protobuf per logical record.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
CHUNK = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    """Every record of a ``.wandb`` file, in order, as ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if len(data) < HEADER.size:  # not written yet (W&B's service buffers it)
        return
    ident, magic, _ = HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, parts = HEADER.size, []
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # too little room left in the block for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        pos += CHUNK.size
        if pos + length > len(data):  # a chunk still being written
            break
        parts.append(data[pos : pos + length])
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record
        elif kind == 0:  # zero padding at the end of the file
            break


@dataclass
class OfflineRun:
    """The parts of an offline run that tests look at."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    resumed: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    preempting: bool = False


def read_run(path: Path) -> OfflineRun:
    """Collect run metadata, config, history rows, summary and exit code from a ``.wandb`` file."""
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
            run.tags = list(r.tags)
            run.resumed = r.resumed
            run.config.update({item.key: json.loads(item.value_json) for item in r.config.update})
        elif kind == "config":
            run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run.history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            run.summary.update(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
            )
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "preempting":
            run.preempting = True
    return run


def offline_runs(run_dir: Path, wait_s: float = 30.0) -> list[OfflineRun]:
    """The offline W&B runs under ``run_dir/wandb``, oldest first, each read once its exit record is on disk.

    W&B's service writes a run's file on its own schedule, buffered (an open run's file can be empty: wandb/wandb
    #9525), and a run ended in this process may be read before the service has written its end: CI once read a
    resumed run's file without even its run record. So wait, up to ``wait_s``, for every run to hold its exit;
    a run that never ends is returned as it is, for the test's assertions to show.
    """
    deadline = time.monotonic() + wait_s
    while True:
        runs = [read_run(p) for p in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))]
        if all(r.exit_code is not None for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.1)
